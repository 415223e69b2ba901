"""IIF for long-tailed image classification, for any PyTorch classifier (docs/method.md §5).

Pure torch (no detectron2). :class:`LogitAdjustment` holds one method's training loss and its
inference map: IIF in the paper's three strategies (``end_to_end``, ``post_process``,
``decoupled``) with any of the seven weight variants, and the baselines softmax, balanced
softmax and logit adjustment (loss or post-hoc). With a torchvision model::

    import torch, torchvision
    from iif_d2.classification import LogitAdjustment, train_only_classifier

    counts = [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]  # training images per class
    model = torchvision.models.resnet18(num_classes=len(counts))
    iif = LogitAdjustment("iif", counts, strategy="end_to_end", variant="smooth")
    loss = iif.loss(model(images), labels)            # training: CE(w ⊙ z, y)
    pred = iif(model(images)).argmax(1)               # inference: argmax(w ⊙ z)

    # decoupled (paper §V.B): train with LogitAdjustment("softmax", counts) first, then
    iif = LogitAdjustment("iif", counts, strategy="decoupled", variant="smooth")
    opt = torch.optim.SGD(train_only_classifier(model, model.fc), lr=0.01, momentum=0.9)
    # ... and train as above (call iif_d2.classification.set_eval_norm(model) after
    # model.train() to keep stage 1's batch-norm statistics)

``strategy="post_process"`` trains with plain cross entropy and applies w only in
``iif(logits)``. Fashion-MNIST-LT and a small CNN for the CPU are in :mod:`.fashion_mnist` and
:mod:`.train`; ``dev/classify_fashion_mnist.py`` trains and benchmarks them.
"""

from .adjust import METHODS, STRATEGIES, LogitAdjustment, set_eval_norm, train_only_classifier

__all__ = ["METHODS", "STRATEGIES", "LogitAdjustment", "set_eval_norm", "train_only_classifier"]
