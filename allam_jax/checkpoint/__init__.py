"""Checkpoints and the run folder: the step-directory layout (``layout``), the regular and emergency
checkpointers behind one protocol and one factory (``checkpointers``), every parameter reader and writer
(``params_io``: ``init_from``, eval, decoding, export, surgery) and the
:class:`~allam_jax.checkpoint.workdir.Workdir` that owns a run's files and lock (with ``workdir_files``, their
validated readers). Nothing is imported here, so ``allam info`` does not pay for Orbax."""
