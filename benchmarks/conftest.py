"""Every benchmark JSON records the environment it was measured in (report.environment(): device, torch, triton
and CUDA versions, the extension's build, commit), so that report.py can rebuild a summary from it anywhere."""

from report import environment


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["ackd_env"] = environment()
