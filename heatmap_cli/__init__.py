"""The composition root: the ``heatmap`` command line and the ``heatmap dev``
runner. The only package that imports the deployables; nothing imports it."""
