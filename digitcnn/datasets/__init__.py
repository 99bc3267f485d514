"""Dataset adapters: the :class:`DigitDataset` type and its registry, the UCI optdigits, MNIST
IDX, Kaggle CSV and image-folder readers, and the validated readers they share."""
