"""The ``reporting`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.reporting.nodes import plot_efficiency, summarize_claims, write_report


def create_pipeline(**kwargs) -> Pipeline:
    """Summary tables, the claims check and a markdown report in data/08_reporting."""
    return Pipeline(
        [
            Node(
                summarize_claims,
                inputs=[
                    "kid_summary",
                    "unseen_client_table",
                    "forgetting_table",
                    "gmm_theory_slopes",
                ],
                outputs=["claims_table", "claims_metrics"],
                name="summarize_claims",
            ),
            Node(
                write_report,
                inputs=[
                    "partition_table",
                    "pretraining_history",
                    "kid_summary",
                    "unseen_client_table",
                    "forgetting_table",
                    "gmm_theory_slopes",
                    "claims_table",
                ],
                outputs="run_report",
                name="write_report",
            ),
            Node(
                plot_efficiency,
                inputs=["unseen_client_table", "kid_reference_table"],
                outputs="efficiency_plot",
                name="plot_efficiency",
            ),
        ]
    )
