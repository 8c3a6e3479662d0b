"""Measuring a guard on labeled JSONL data sets, as pure logic (``guardgraph eval`` in ``graph/cli/eval.py``
is its command line): ``datasets`` reads the labeled rows (format, EvalRow, load_rows); ``metrics`` is the
one implementation of the metrics (precision, recall, F1, FPR and accuracy from confusion counts, the
precision-recall curve, AUPRC, percentiles, EvalMetrics), also used by the offline guard's training script;
``run`` checks rows with a guard and scores them (Prediction, evaluate_file, write_predictions); ``plot``
draws the precision-recall curves. Import names from these modules; the package re-exports none.
"""
