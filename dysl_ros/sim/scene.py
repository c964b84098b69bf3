"""The MuJoCo tabletop scene, built from primitives (no downloaded assets).

World frame: the table top is the plane z = 0, +x points to the right of the front camera's
image, +y points away from the front camera (towards the drawer), +z up. Lengths in metres.

Bodies: a floating two-finger gripper welded to a mocap body ('target'), a red and a blue
block (free joints), and a cabinet with a drawer (slide joint) that has a handle bar. The
gripper frame sits at the tool centre point (between the fingertips); its fingers point down
(-z) and close along the gripper's x axis. Cameras: 'front' (fixed) and 'wrist' (on the gripper).
"""
from __future__ import annotations

# Geometry shared with the env, the tasks and the expert.
TABLE_HALF = (0.4, 0.3)              # table top half extents (x, y)
BLOCK_HALF = 0.02                    # blocks are 4 cm cubes resting at z = BLOCK_HALF
BLOCK_NAMES = ('red_block', 'blue_block')
FINGER_OPEN = 0.045                  # finger joint position when fully open (per finger)
CABINET_Y = 0.225                    # cabinet centre y; its front face is at y = 0.15
HANDLE_OFFSET = (0.0, -0.125, 0.065)  # handle bar centre in the cabinet frame
DRAWER_RANGE = 0.15                  # drawer slide travel
CAMERAS = ('front', 'wrist')

_XML = """
<mujoco model="dysl_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <!-- fixes the shadow map and clip planes to the workspace, whatever the backdrop size -->
  <statistic extent="0.8" center="0 0.05 0.1"/>
  <visual>
    <quality shadowsize="512" offsamples="0"/>
    <global offwidth="{off}" offheight="{off}"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
  </visual>
  <default>
    <geom friction="1 0.01 0.001" solref="0.005 1"/>
    <default class="visual">
      <geom contype="0" conaffinity="0" group="1"/>
    </default>
    <default class="finger">
      <geom type="box" size="0.006 0.018 0.025" mass="0.03" friction="1.5 0.02 0.002"
            condim="4" rgba="0.2 0.2 0.22 1"/>
      <joint type="slide" range="0 {finger_open}" damping="2" armature="0.01"/>
    </default>
    <default class="block">
      <geom type="box" size="{block} {block} {block}" mass="0.08" condim="4"/>
    </default>
    <default class="wood">
      <geom type="box" rgba="0.55 0.4 0.27 1"/>
    </default>
    <default class="cabinet">
      <geom type="box" rgba="0.42 0.3 0.2 1"/>
    </default>
  </default>

  <worldbody>
    <light name="sun" pos="0.2 -0.3 1.2" dir="-0.15 0.25 -1" directional="true"
           diffuse="0.55 0.55 0.55" castshadow="true"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.4" rgba="0.35 0.37 0.4 1"/>
    <geom name="wall" class="visual" type="box" size="2 0.01 1.2" pos="0 0.9 0.4"
          rgba="0.55 0.58 0.62 1"/>
    <geom name="table" type="box" size="{table_x} {table_y} 0.02" pos="0 0 -0.02"
          rgba="0.78 0.75 0.7 1"/>
    <camera name="front" pos="0 -0.52 0.5" xyaxes="1 0 0 0 0.628 0.778" fovy="55"/>

    <body name="target" mocap="true" pos="0 -0.1 0.22"/>
    <body name="gripper" pos="0 -0.1 0.22" gravcomp="1">
      <joint name="gripper" type="free"/>
      <inertial pos="0 0 0.045" mass="0.4" diaginertia="0.002 0.002 0.002"/>
      <geom name="palm" type="box" size="0.045 0.02 0.01" pos="0 0 0.045"
            rgba="0.3 0.3 0.33 1"/>
      <geom name="wrist_link" class="visual" type="cylinder" size="0.015 0.03"
            pos="0 0 0.085" rgba="0.5 0.5 0.55 1"/>
      <camera name="wrist" pos="0 -0.04 0.05" xyaxes="1 0 0 0 0.94 0.34" fovy="80"/>
      <body name="finger_l" gravcomp="1">
        <joint name="finger_l" class="finger" axis="1 0 0"/>
        <geom name="finger_l" class="finger" pos="0.006 0 0.01"/>
      </body>
      <body name="finger_r" gravcomp="1">
        <joint name="finger_r" class="finger" axis="-1 0 0"/>
        <geom name="finger_r" class="finger" pos="-0.006 0 0.01"/>
      </body>
    </body>

    <body name="red_block" pos="0.1 -0.1 {block}">
      <freejoint name="red_block"/>
      <geom name="red_block" class="block" rgba="0.85 0.12 0.12 1"/>
    </body>
    <body name="blue_block" pos="-0.1 -0.1 {block}">
      <freejoint name="blue_block"/>
      <geom name="blue_block" class="block" rgba="0.12 0.3 0.88 1"/>
    </body>

    <body name="cabinet" pos="0 {cabinet_y} 0">
      <geom name="cabinet_top" class="cabinet" size="0.12 0.075 0.01" pos="0 0 0.14"/>
      <geom name="cabinet_left" class="cabinet" size="0.005 0.075 0.0675" pos="-0.115 0 0.0675"/>
      <geom name="cabinet_right" class="cabinet" size="0.005 0.075 0.0675" pos="0.115 0 0.0675"/>
      <geom name="cabinet_back" class="cabinet" size="0.12 0.005 0.0675" pos="0 0.07 0.0675"/>
      <body name="drawer">
        <joint name="drawer" type="slide" axis="0 -1 0" range="0 {drawer_range}" damping="3"
               frictionloss="1.0" armature="0.05"/>
        <geom name="drawer_front" class="wood" size="0.108 0.005 0.06" pos="0 -0.07 0.065"
              mass="0.15"/>
        <geom name="drawer_bottom" class="wood" size="0.1 0.065 0.004" pos="0 0 0.009"
              mass="0.1"/>
        <geom name="drawer_left" class="wood" size="0.004 0.065 0.04" pos="-0.1 0 0.045"
              mass="0.05"/>
        <geom name="drawer_right" class="wood" size="0.004 0.065 0.04" pos="0.1 0 0.045"
              mass="0.05"/>
        <geom name="drawer_back" class="wood" size="0.1 0.004 0.04" pos="0 0.061 0.045"
              mass="0.05"/>
        <geom name="handle_post_l" type="box" size="0.005 0.025 0.005" pos="-0.035 -0.1 0.065"
              rgba="0.7 0.7 0.72 1" mass="0.01"/>
        <geom name="handle_post_r" type="box" size="0.005 0.025 0.005" pos="0.035 -0.1 0.065"
              rgba="0.7 0.7 0.72 1" mass="0.01"/>
        <geom name="handle" type="box" size="0.045 0.006 0.006" pos="{hx} {hy} {hz}"
              rgba="0.75 0.75 0.78 1" mass="0.01" friction="1.5 0.02 0.002" condim="4"/>
        <site name="handle" pos="{hx} {hy} {hz}" size="0.005" rgba="0 0 0 0"/>
      </body>
    </body>
  </worldbody>

  <contact>
    <exclude body1="finger_l" body2="finger_r"/>
    <exclude body1="cabinet" body2="drawer"/>
  </contact>

  <equality>
    <weld name="grip_weld" body1="target" body2="gripper" relpose="0 0 0 1 0 0 0"
          solref="0.01 1"/>
  </equality>

  <actuator>
    <position name="finger_l" joint="finger_l" kp="400" ctrlrange="0 {finger_open}"
              forcerange="-12 12"/>
    <position name="finger_r" joint="finger_r" kp="400" ctrlrange="0 {finger_open}"
              forcerange="-12 12"/>
  </actuator>
</mujoco>
"""


def build_scene_xml(timestep: float = 0.002, image_size: int = 64) -> str:
    """Return the MJCF text of the tabletop scene."""
    return _XML.format(
        timestep=repr(float(timestep)), off=max(640, int(image_size)),
        finger_open=FINGER_OPEN, block=BLOCK_HALF, table_x=TABLE_HALF[0],
        table_y=TABLE_HALF[1], cabinet_y=CABINET_Y, drawer_range=DRAWER_RANGE,
        hx=HANDLE_OFFSET[0], hy=HANDLE_OFFSET[1], hz=HANDLE_OFFSET[2])
