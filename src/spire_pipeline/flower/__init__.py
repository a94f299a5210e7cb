"""The ``flower`` engine: federated pretraining as a Flower ``ServerApp`` and ``ClientApp``
(Message API) over the framework-free core, in Flower's simulation runtime or against a
SuperLink and SuperNodes.

Nothing is imported here, so that loading the ``ClientApp`` stays cheap; the engine is
:class:`spire_pipeline.flower.engine.FlowerEngine`.
"""
