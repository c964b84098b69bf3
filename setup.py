import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'dysl_ros'


# Made from a model on the robot and git-ignored: an export (<model>/onnx) and its engines.
GENERATED_DIRS = ('onnx', 'engines', '__pycache__')
GENERATED_FILES = ('.onnx', '.engine')


def tree(folder):
    """data_files entries installing `folder` (with subfolders) under share/<package>, without
    generated exports and engines."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in GENERATED_DIRS)
        files = sorted(f for f in files if not f.endswith(GENERATED_FILES))
        if files:
            entries.append((os.path.join('share', package_name, root),
                            [os.path.join(root, f) for f in files]))
    return entries


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml', 'README.md']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ] + tree('models'),
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dysl_ros maintainers',
    maintainer_email='dysl-ros@example.com',
    description='Dynamic-static layer skipping (DySL) VLA policy for ROS 2, with TensorRT '
                'segment engines for edge deployment.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'dysl = dysl_ros.cli:main',
            'policy_node = dysl_ros.nodes.policy_node:main',
            'controller_node = dysl_ros.nodes.controller_node:main',
            'sim_node = dysl_ros.nodes.sim_node:main',
        ],
    },
)
