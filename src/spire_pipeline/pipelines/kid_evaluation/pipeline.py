"""The ``kid_evaluation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.kid_evaluation.nodes import (
    evaluate_forgetting,
    evaluate_kid,
    measure_conditioning,
    plot_kid_bars,
    plot_kid_sample_grids,
    real_features,
    real_reference_kid,
    summarize_kid,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Models + clients' test splits -> KID table, summary, bar chart, sample grids, metrics."""
    return Pipeline(
        [
            Node(
                real_features,
                inputs=["client_splits", "params:kid_evaluation"],
                outputs="kid_real_features",
                name="compute_real_features",
            ),
            Node(
                evaluate_kid,
                inputs=[
                    "client_splits",
                    "pretrained_models",
                    "adapted_models",
                    "kid_real_features",
                    "params:kid_evaluation",
                    "adaptation_choices",
                ],
                outputs=["kid_table", "kid_samples", "kid_generated"],
                name="evaluate_kid",
            ),
            Node(
                measure_conditioning,
                inputs=["client_splits", "kid_generated", "params:kid_evaluation"],
                outputs=["conditioning_strength", "conditioning_metrics"],
                name="measure_conditioning",
            ),
            Node(
                evaluate_forgetting,
                inputs=[
                    "client_splits",
                    "pretrained_models",
                    "adapted_models",
                    "kid_real_features",
                    "params:kid_evaluation",
                ],
                outputs="forgetting_kid",
                name="evaluate_forgetting",
            ),
            Node(
                summarize_kid,
                inputs=["kid_table", "forgetting_kid", "adaptation_table"],
                outputs=["kid_summary", "forgetting_table", "unseen_client_table", "kid_metrics"],
                name="summarize_kid",
            ),
            Node(
                real_reference_kid,
                inputs=["client_splits", "kid_real_features", "params:kid_evaluation"],
                outputs="kid_reference_table",
                name="real_reference_kid",
            ),
            Node(
                plot_kid_bars,
                inputs=["kid_table", "kid_reference_table"],
                outputs="kid_bar_chart",
                name="plot_kid_bars",
            ),
            Node(
                plot_kid_sample_grids,
                inputs=["client_splits", "kid_samples", "params:dataset"],
                outputs="kid_sample_grids",
                name="plot_kid_sample_grids",
            ),
        ]
    )
