"""Session-wide test environment: DDS on loopback, the package's FastDDS profile for large
camera frames, headless MuJoCo; child processes inherit all of it. Each test module runs in
a DDS domain of its own (the session's, random unless ROS_DOMAIN_ID is set, then the next
ones), so participants an earlier module left behind (a node process still exiting) never
reach a later module's nodes, and parallel runs on one machine rarely cross-talk."""
import itertools
import os

import pytest
import torch

from dysl_ros.nodes.launcher import LOCAL_DOMAINS, ros_environment

ros_environment()
os.environ.setdefault('MUJOCO_GL', 'egl')

# the session's domain first (when it is one of LOCAL_DOMAINS), then the next ones, cycling
_module_domains = (LOCAL_DOMAINS[d % len(LOCAL_DOMAINS)] for d in
                   itertools.count(int(os.environ['ROS_DOMAIN_ID']) - LOCAL_DOMAINS.start))


@pytest.fixture(scope='module', autouse=True)
def dds_domain_of_its_own():
    """Module scope, set up before the module's own fixtures, so node processes a
    module-scoped fixture starts share the domain of the module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ROS_DOMAIN_ID', str(next(_module_domains)))
        yield


@pytest.fixture(scope='module')
def one_torch_thread():
    """For modules that run tiny models in this process (`pytestmark = usefixtures`): they
    gain nothing from threads, threads stall on a busy machine, and exact repeatability
    needs one thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
