"""The ``reporting`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.reporting.nodes import plot_efficiency, summarize_claims, write_report

#: figure in the report -> the dataset that holds it
REPORT_FIGURES = {
    "partition_heatmap": "partition_heatmap",
    "pretraining_loss": "pretraining_loss_plot",
    "pretraining_sample_grids": "pretraining_sample_grids",
    "kid_bar_chart": "kid_bar_chart",
    "kid_sample_grids": "kid_sample_grids",
    "efficiency": "efficiency_plot",
    "error_vs_dimension": "gmm_theory_error_vs_dimension_plot",
    "error_vs_sample_size": "gmm_theory_error_vs_sample_size_plot",
    "known_vs_estimated_means": "gmm_theory_known_vs_estimated_means_plot",
    "b_convergence": "gmm_theory_b_convergence_plot",
}


def create_pipeline(**kwargs) -> Pipeline:
    """Summary tables, the claims check and a markdown report in data/08_reporting."""
    return Pipeline(
        [
            Node(
                summarize_claims,
                inputs=[
                    "kid_table",
                    "adaptation_table",
                    "forgetting_table",
                    "tuning_table",
                    "gmm_theory_slopes",
                    "params:reporting",
                ],
                outputs=["claims_table", "claims_comparisons", "claims_metrics"],
                name="summarize_claims",
            ),
            Node(
                write_report,
                inputs={
                    "run_metadata": "run_metadata",
                    "parameters": "parameters",
                    "partition_table": "partition_table",
                    "pretraining_history": "pretraining_history",
                    "kid_summary": "kid_summary",
                    "kid_reference": "kid_reference_table",
                    "unseen_client_table": "unseen_client_table",
                    "forgetting_table": "forgetting_table",
                    "gmm_theory_slopes": "gmm_theory_slopes",
                    "claims": "claims_table",
                    "claims_comparisons": "claims_comparisons",
                    "adaptation_choices": "adaptation_choices",
                    "conditioning_strength": "conditioning_strength",
                    # figures (PNG bytes), embedded by relative path
                    **REPORT_FIGURES,
                },
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
