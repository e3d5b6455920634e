"""The one runtime: device and precision policy, stop signals, torchrun environment, CPU threads."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

import streamsr.runtime as runtime
from streamsr.errors import ConfigError
from streamsr.runtime import (
    DistEnv,
    ProcessGroup,
    StopSignals,
    available_cpus,
    device_for,
    dist_env,
    pin_cpu_threads,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")


def test_device_names_are_checked_in_one_line():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="unsupported device 'meta'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_one_precision_policy_for_inference_and_training_on_the_cpu():
    for training in (False, True):
        assert resolve_precision("auto", CPU, training=training) == torch.float32
        assert resolve_precision("fp32", CPU, training=training) == torch.float32
        assert resolve_precision("bf16", CPU, training=training) == torch.bfloat16
        with pytest.raises(ConfigError, match="unknown precision 'half'"):
            resolve_precision("half", CPU, training=training)
    assert resolve_precision("fp16", CPU) == torch.float16  # inference: as asked
    with pytest.raises(ConfigError, match="precision fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU, training=True)


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_a_gpu_differs_only_without_bf16(monkeypatch, bf16):
    """auto: bf16 where the GPU has it, for both; without it inference takes fp16 and training
    stays fp32 (fp16 training needs loss scaling; it is there when asked for)."""
    monkeypatch.setattr(runtime, "_bf16_supported", lambda device: bf16)
    gpu = torch.device("cuda", 0)  # a device object only: nothing runs on it
    assert resolve_precision("auto", gpu) == (torch.bfloat16 if bf16 else torch.float16)
    assert resolve_precision("auto", gpu, training=True) == (torch.bfloat16 if bf16 else torch.float32)
    assert resolve_precision("fp16", gpu, training=True) == torch.float16
    if not bf16:
        assert resolve_precision("bf16", gpu) == torch.bfloat16
        with pytest.raises(ConfigError, match="this GPU does not support bf16"):
            resolve_precision("bf16", gpu, training=True)


def test_a_first_signal_sets_the_flag_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(message="testing") as stop:
        assert stop.signum is None and not stop.event.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.event.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_signals_leave_handlers_alone_when_off_or_off_the_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(enabled=False):
        assert signal.getsignal(signal.SIGTERM) is before
    seen = []

    def worker() -> None:
        with StopSignals() as stop:
            seen.append((stop.enabled, signal.getsignal(signal.SIGTERM) is before))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(False, True)]


def test_cpu_thread_counts_are_checked():
    assert available_cpus() >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be a whole number"):
            pin_cpu_threads(bad)


def test_environment_of_a_plain_process_and_of_a_torchrun_rank():
    assert dist_env({}) == DistEnv(0, 1, 0, 1)
    env = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.distributed, env.main) == (3, 4, 1, True, False)
    with pytest.raises(ConfigError):
        dist_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError):
        dist_env({"WORLD_SIZE": "two"})
    assert device_for(env, "cpu") == "cpu"
    if not torch.cuda.is_available():
        assert device_for(env, "auto") == "cpu"
    with ProcessGroup(DistEnv()) as group:  # a single process: collectives are identities
        assert group.broadcast({"a": 1}) == {"a": 1} and group.all_gather(5) == [5]
        assert not torch.distributed.is_initialized()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_each_local_rank_gets_its_own_gpu():
    n = torch.cuda.device_count()
    assert device_for(DistEnv(0, n, n - 1, n), "auto") == f"cuda:{n - 1}"
    assert device_for(DistEnv(0, n, 0, n), "cuda:0") == "cuda:0"
    with pytest.raises(ConfigError):
        device_for(DistEnv(0, n + 1, n, n + 1), "auto")


