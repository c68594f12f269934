"""Headless rendering shared by the suites."""

from __future__ import annotations

import mujoco


def make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """A square offscreen renderer with shadows and reflections off: on a software renderer (EGL/Mesa)
    they cost 5x (Meta-World's heavy meshes) to 15x (simple scenes) for little visual gain at 64x64."""
    # The offscreen buffer comes from the model's XML; grow it for larger images.
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    renderer = mujoco.Renderer(model, size, size)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return renderer
