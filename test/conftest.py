"""Session-wide test environment: DDS on loopback with a domain of our own, headless MuJoCo."""
import os
import random

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# A random domain per test session so parallel runs on one machine never cross-talk.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault('MUJOCO_GL', 'egl')
