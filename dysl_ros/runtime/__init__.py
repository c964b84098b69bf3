"""Runners per backend and the policy executor that walks segments under the guidance; the
ROS-free logic under the nodes (policy session, chunk execution, statistics)."""
