"""The networks: hash-grid configuration and modules, the models (NGP, ENGP, CINR), inference
(``render``), resampling arithmetic and metrics. Submodules are imported on demand: ``config``
and ``resample`` need no torch."""
