"""Session-wide test environment: DDS on loopback with a domain of our own (random per test
session, so parallel runs on one machine never cross-talk), the package's FastDDS profile for
large camera frames, headless MuJoCo. Child processes inherit all of it."""
import os

from dysl_ros.nodes.launcher import ros_environment

ros_environment()
os.environ.setdefault('MUJOCO_GL', 'egl')
