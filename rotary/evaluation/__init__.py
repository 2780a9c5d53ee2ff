"""Evaluation, in one place: the trainer's evaluation over batches (``batches``), the metrics of a
finished model on a split (``metrics``: perplexity and bits per byte, masked-token accuracy, BLEU
and chrF, classification reports), and ``rotary eval``'s scoring of a run, one scorer per row of
the task table (``runs``). The demo's table and the experiments call the same functions."""

from rotary.evaluation.metrics import (
                                       assistant_token_metrics,
                                       bootstrap_interval,
                                       causal_documents_metrics,
                                       causal_lm_metrics,
                                       classification_report,
                                       classifier_predictions,
                                       evaluate_classifier,
                                       masked_lm_metrics,
                                       seq2seq_metrics,
)
from rotary.evaluation.runs import EvalOptions, check_eval_options, eval_window, run_eval

__all__ = ["EvalOptions", "assistant_token_metrics", "bootstrap_interval", "causal_documents_metrics",
           "causal_lm_metrics", "check_eval_options", "classification_report", "classifier_predictions",
           "eval_window", "evaluate_classifier", "masked_lm_metrics", "run_eval", "seq2seq_metrics"]
