"""The SLURM sweep docs/training.md shows (`hydra/launcher=slurm`, conf/hydra/launcher/slurm.yaml) composes and
becomes the sbatch script a cluster would get: 2 nodes x 8 tasks (one per GPU, so Lightning reads SLURM's
environment), 8 GPUs per node, the partition and account given on the command line, requeue on preemption/timeout.
No cluster here: submitit's SlurmExecutor is built exactly as hydra-submitit-launcher builds it, with its `srun`
check stubbed, and renders the script without submitting (the same config ran locally through `submitit_local`:
tests/integration/test_train_launchers.py)."""

from __future__ import annotations

import pytest

DOCS_SWEEP = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=myproj",
              "+hydra.launcher.additional_parameters.qos=high", "trainer=fsdp", "trainer.devices=8",
              "trainer.num_nodes=2"]


def _compose(overrides, sweep_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cardforge.core import paths
    from cardforge.core.config import compose as cf_compose

    cf_compose.setup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
            return compose("train", overrides=[*overrides, f"hydra.sweep.dir={sweep_dir}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _sbatch(cfg, monkeypatch) -> str:
    """The sbatch script hydra-submitit-launcher's SlurmLauncher would submit for `cfg` (its own parameter mapping:
    hydra_plugins/hydra_submitit_launcher/submitit_launcher.py, BaseSubmititLauncher.launch)."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun on this host
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m cardforge.train", "uid")


def test_docs_slurm_sweep_becomes_a_two_node_eight_gpu_sbatch_job(tmp_path, monkeypatch):
    cfg = _compose(DOCS_SWEEP, tmp_path / "sweep")
    script = _sbatch(cfg, monkeypatch)
    lines = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    for want in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8", "--partition=gpu",
                 "--account=myproj", "--qos=high", "--time=720", "--mem=200GB"):
        assert f"#SBATCH {want}" in lines, (want, sorted(lines))
    # preemption / timeout: submitit signals the job before the end and requeues it (max_num_timeout: 3); the stage
    # then resumes from its last checkpoint
    assert "#SBATCH --signal=USR2@120" in lines
    assert cfg.hydra.launcher.max_num_timeout == 3
    assert "srun" in script and "python -m cardforge.train" in script


def test_slurm_launcher_without_a_partition_takes_the_clusters_default(tmp_path, monkeypatch):
    # (`partition: ???` in slurm.yaml had no effect: a missing value merged over the plugin's structured default
    # leaves its None; the file now says null)
    cfg = _compose(["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=4"], tmp_path / "sweep")
    lines = [line for line in _sbatch(cfg, monkeypatch).splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=4" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --nodes=1" in lines and not [line for line in lines if "--partition" in line]


def test_a_dict_override_of_additional_parameters_is_refused(tmp_path):
    """What docs/training.md showed before: `'hydra.launcher.additional_parameters={account: myproj}'` fails to compose
    (a struct dict: keys are added with `+...additional_parameters.KEY=V`, or `hydra.launcher.account`)."""
    with pytest.raises(Exception, match="additional_parameters"):
        _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                  "hydra.launcher.additional_parameters={account: myproj}"], tmp_path / "sweep")
