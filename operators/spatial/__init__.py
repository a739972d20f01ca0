"""Spatial processing: every series onto the model grid, and the brain mask.

* :mod:`.grid`: the reference series, the model grid, resampling onto it and labels back.
* :mod:`.registration` (SimpleITK), :mod:`.registration_torch` and :mod:`.registration_torch_core`
  (PyTorch, NumPy arrays): rigid registration of a series to the reference; both return a
  :class:`.registration_result.RegistrationResult`. :mod:`.itk_threads`: SimpleITK's global
  thread count, set while registrations run (reproducibility).
* :mod:`.skull_stripped` (is a study stripped?), :mod:`.brain_masking` (which method, which
  series), :mod:`.hd_bet` (HD-BET), :mod:`.brain_extraction` (MNI152 template fallback).

Conventions (every module here; the others point to this)
--------------------------------------------------------
* **Physical space is LPS mm** (ITK / DICOM patient coordinates: +x = patient Left, +y =
  Posterior, +z = Superior). Images are ``SimpleITK.Image`` s in it. NIfTI / nibabel affines are
  RAS: negate their first two rows (x -> -x, y -> -y) before mixing one in;
  ``sitk.ReadImage`` already converts.
* **Axis order.** NumPy arrays are in ``sitk.GetArrayFromImage`` order ``(Z, Y, X)`` =
  (slices, rows, columns); SimpleITK sizes, indices, spacings and origins are ``(x, y, z)``,
  so ``size == array.shape[::-1]`` and ``spacing[0]`` is the step along the array's LAST axis.
  A nibabel ``data[i, j, k]`` array is ``array.transpose(2, 1, 0)``.
* **The model grid** is 1 mm isotropic with identity direction in LPS (the BraTS grid): array
  axes Z (inferior -> superior), Y (anterior -> posterior), X (right -> left).
* **Transforms follow ITK**: a registration's transform maps *fixed* (reference) points to
  *moving* points, ``fixed(x) ~ moving(T(x))``. Resampling the moving image onto a grid in fixed
  space uses ``T`` as it is; moving points into fixed space needs ``T``'s inverse. Rigid ones
  are ``Euler3DTransform`` s with ``ComputeZYX`` off: ``T(x) = R (x - c) + c + t``,
  ``R = Rz @ Rx @ Ry``.

May import: :mod:`engines` (HD-BET's engines, the CPU settings), :mod:`operators.study_model`,
:mod:`operators.errors`.
"""
