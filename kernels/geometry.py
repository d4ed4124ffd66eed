"""Triton helpers for the pinhole warp shared by the geometry kernels (DESIGN 2, 3.1, 3.2).

The twins of csrc/geometry.h: pixel centres at integer (u, v), u the column; OpenCV camera;
matrices row-major in memory. Every helper works on blocks of pixels.
"""

import triton
import triton.language as tl


@triton.jit
def depth_is_valid(z):
    """Finite and > 0 (z - z is NaN for +-inf and NaN)."""
    return (z > 0) & (z - z == 0)


@triton.jit
def unproject(kinv_ptr, u, v, z):
    """X = z K^-1 [u, v, 1] with K^-1 (3x3) at kinv_ptr."""
    k0, k1, k2 = tl.load(kinv_ptr + 0), tl.load(kinv_ptr + 1), tl.load(kinv_ptr + 2)
    k3, k4, k5 = tl.load(kinv_ptr + 3), tl.load(kinv_ptr + 4), tl.load(kinv_ptr + 5)
    k6, k7, k8 = tl.load(kinv_ptr + 6), tl.load(kinv_ptr + 7), tl.load(kinv_ptr + 8)
    return z * (k0 * u + k1 * v + k2), z * (k3 * u + k4 * v + k5), z * (k6 * u + k7 * v + k8)


@triton.jit
def affine_point(m_ptr, u, v, z):
    """z M [u, v, 1] + t with [M | t] (3x4) at m_ptr: camera or world points from depth."""
    m0, m1, m2, m3 = tl.load(m_ptr + 0), tl.load(m_ptr + 1), tl.load(m_ptr + 2), tl.load(m_ptr + 3)
    m4, m5, m6, m7 = tl.load(m_ptr + 4), tl.load(m_ptr + 5), tl.load(m_ptr + 6), tl.load(m_ptr + 7)
    m8, m9, m10, m11 = tl.load(m_ptr + 8), tl.load(m_ptr + 9), tl.load(m_ptr + 10), tl.load(m_ptr + 11)
    return (z * (m0 * u + m1 * v + m2) + m3, z * (m4 * u + m5 * v + m6) + m7,
            z * (m8 * u + m9 * v + m10) + m11)


@triton.jit
def rigid_transform(rt_ptr, x, y, z):
    """R X + t with [R | t] (3x4) at rt_ptr."""
    r0, r1, r2, t0 = tl.load(rt_ptr + 0), tl.load(rt_ptr + 1), tl.load(rt_ptr + 2), tl.load(rt_ptr + 3)
    r3, r4, r5, t1 = tl.load(rt_ptr + 4), tl.load(rt_ptr + 5), tl.load(rt_ptr + 6), tl.load(rt_ptr + 7)
    r6, r7, r8, t2 = tl.load(rt_ptr + 8), tl.load(rt_ptr + 9), tl.load(rt_ptr + 10), tl.load(rt_ptr + 11)
    return r0 * x + r1 * y + r2 * z + t0, r3 * x + r4 * y + r5 * z + t1, r6 * x + r7 * y + r8 * z + t2


@triton.jit
def project(k_ptr, x, y, z):
    """(K Y)_xy / Y_z with K (3x3) at k_ptr; the caller checks Y_z > 0."""
    k0, k1, k2 = tl.load(k_ptr + 0), tl.load(k_ptr + 1), tl.load(k_ptr + 2)
    k3, k4, k5 = tl.load(k_ptr + 3), tl.load(k_ptr + 4), tl.load(k_ptr + 5)
    return (k0 * x + k1 * y + k2 * z) / z, (k3 * x + k4 * y + k5 * z) / z


@triton.jit
def warp_pixel(pm_ptr, u, v, z):
    """Source pixel (u, v) with depth z (> 0) warped by the pair matrix at pm_ptr (3x4, see
    vgpa.reference.geometry.pair_projection): q = M [u, v, 1, 1/z], z' = z q_z,
    (u', v') = q_xy / q_z. Returns (z', u', v', dz'/dz, du'/dz, dv'/dz, q_z); the caller
    checks q_z > 0 (u', v' are garbage otherwise)."""
    m0, m1, m2, m3 = tl.load(pm_ptr + 0), tl.load(pm_ptr + 1), tl.load(pm_ptr + 2), tl.load(pm_ptr + 3)
    m4, m5, m6, m7 = tl.load(pm_ptr + 4), tl.load(pm_ptr + 5), tl.load(pm_ptr + 6), tl.load(pm_ptr + 7)
    m8, m9, m10, m11 = tl.load(pm_ptr + 8), tl.load(pm_ptr + 9), tl.load(pm_ptr + 10), tl.load(pm_ptr + 11)
    inv_z = 1.0 / z
    qx = m0 * u + m1 * v + m2 + m3 * inv_z
    qy = m4 * u + m5 * v + m6 + m7 * inv_z
    qz = m8 * u + m9 * v + m10 + m11 * inv_z
    front = qz > 0
    qs = tl.where(front, qz, 1.0)
    tu = qx / qs
    tv = qy / qs
    inv_z2 = inv_z * inv_z
    dqz = -m11 * inv_z2
    du_dz = (-m3 * inv_z2 - tu * dqz) / qs
    dv_dz = (-m7 * inv_z2 - tv * dqz) / qs
    return z * qz, tu, tv, m8 * u + m9 * v + m10, du_dz, dv_dz, qz


@triton.jit
def inside_image(u, v, H, W, STRICT: tl.constexpr):
    """strict: 0 <= u <= W-1, 0 <= v <= H-1; else 0 <= u < W, 0 <= v < H. False for NaN."""
    if STRICT:
        return (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    else:
        return (u >= 0) & (u < W) & (v >= 0) & (v < H)


@triton.jit
def bilinear_corner(u, v):
    """(x0, y0) as int64 and the fractional weights (wx, wy) of the taps around (u, v)."""
    fu = tl.floor(u)
    fv = tl.floor(v)
    return fu.to(tl.int64), fv.to(tl.int64), u - fu, v - fv


@triton.jit
def bilinear_tap(x0, y0, wx, wy, H, W, active, DX: tl.constexpr, DY: tl.constexpr):
    """Tap (x0 + DX, y0 + DY): its (x, y), weight, and whether it is used (inside the image,
    weight != 0, and the pixel active): unused taps are never read."""
    x = x0 + DX
    y = y0 + DY
    if DX == 1:
        weight_x = wx
    else:
        weight_x = 1.0 - wx
    if DY == 1:
        weight_y = wy
    else:
        weight_y = 1.0 - wy
    weight = weight_x * weight_y
    used = active & (x >= 0) & (x < W) & (y >= 0) & (y < H) & (weight != 0)
    return x, y, weight, used
