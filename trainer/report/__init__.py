"""The evaluation report of an exported version, and what draws it:

    evaluate.py   score a version through its serving signature; write <version>/eval/
    metrics.py    confusion matrix, per-class scores, worst mistakes, calibration (numpy)
    pictures.py   the PNGs (matplotlib), for the report and for TensorBoard

trainer/summaries.py draws each epoch's TensorBoard pictures with the same two modules.
"""
