"""Small helpers with no model in them: detectron2 compatibility, machine facts, random
generators' state, atomic files, upstream warnings."""
