"""The ``gmm_theory`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.gmm_theory.nodes import (
    fit_error_slopes,
    plot_b_convergence,
    plot_error_vs_dimension,
    plot_error_vs_sample_size,
    plot_known_vs_estimated_means,
    run_gmm_sweep,
    summarise_errors,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Parameters -> estimates per dimension x n x replicate, error table, slopes, plots."""
    return Pipeline(
        [
            Node(
                run_gmm_sweep,
                inputs="params:gmm_theory",
                outputs=["gmm_theory_results", "gmm_theory_b_trajectories"],
                name="run_gmm_sweep",
            ),
            Node(
                summarise_errors,
                inputs="gmm_theory_results",
                outputs="gmm_theory_summary",
                name="summarise_gmm_errors",
            ),
            Node(
                fit_error_slopes,
                inputs=["gmm_theory_results", "params:gmm_theory"],
                outputs=["gmm_theory_slopes", "gmm_theory_metrics"],
                name="fit_gmm_error_slopes",
            ),
            Node(
                plot_error_vs_dimension,
                inputs=["gmm_theory_results", "gmm_theory_slopes"],
                outputs="gmm_theory_error_vs_dimension_plot",
                name="plot_gmm_error_vs_dimension",
            ),
            Node(
                plot_error_vs_sample_size,
                inputs=["gmm_theory_results", "gmm_theory_slopes"],
                outputs="gmm_theory_error_vs_sample_size_plot",
                name="plot_gmm_error_vs_sample_size",
            ),
            Node(
                plot_known_vs_estimated_means,
                inputs=["gmm_theory_results", "gmm_theory_slopes"],
                outputs="gmm_theory_known_vs_estimated_means_plot",
                name="plot_gmm_known_vs_estimated_means",
            ),
            Node(
                plot_b_convergence,
                inputs=["gmm_theory_b_trajectories", "gmm_theory_results"],
                outputs="gmm_theory_b_convergence_plot",
                name="plot_gmm_b_convergence",
            ),
        ],
        tags="gmm_theory",
    )
