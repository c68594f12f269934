"""Headless rendering shared by the suites, and its teardown.

MuJoCo's EGL backend registers `eglTerminate` with `atexit` when it makes its first GL context. A
renderer still open after that (an env nobody closed, a worker process's envs) frees its context in
`__del__` during interpreter shutdown, against a terminated display: EGLError tracebacks on stderr
(EGL_NOT_INITIALIZED). So every renderer made here is tracked, and one `atexit` handler, registered
right after the first renderer exists (so after MuJoCo's, and atexit runs last-registered first), closes
the ones still open before the display goes away.
"""

from __future__ import annotations

import atexit
import weakref

import mujoco

_open: weakref.WeakSet = weakref.WeakSet()  # renderers made here and not yet garbage-collected
_registered = False


def make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """A square offscreen renderer with shadows, reflections and multisampling off: on a software
    renderer (EGL/Mesa llvmpipe) shadows and reflections cost 5x (Meta-World's heavy meshes) to 15x
    (simple scenes), and MuJoCo's default 4x multisampling 2.7x more (a 64x64 Meta-World frame: 34 ms
    with it, 12.6 ms without, on one core: `bench/render.py`), for little visual gain at 64x64.
    Sets `model.vis` (offscreen buffer size, samples): renderers made later from `model` share them.
    Close it with `.close()` (the env's `close` does); one left open is closed at exit."""
    global _registered
    # The offscreen buffer comes from the model's XML; grow it for larger images.
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, size, size)
    _open.add(renderer)
    if not _registered:  # after the first GL context, so this runs before MuJoCo's eglTerminate
        atexit.register(close_all)
        _registered = True
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return renderer


def close_all() -> None:
    """Close every renderer made here that is still open (closing twice is harmless)."""
    for renderer in list(_open):
        renderer.close()
    _open.clear()
