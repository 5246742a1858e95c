"""MR physics: units, tissue values, protocols, closed-form signals, scanner effects."""

from phyjax.physics.scanner import (ScannerEffects, b1_field, bias_field, rician_noise,
                                    sample_bias_coefficients, slice_profile)
from phyjax.physics.sequences import (ENCODING_SIZE, SEQUENCES, Protocol, encode, from_sidecar,
                                      infer_sequence)
from phyjax.physics.signal import (ernst_angle, inversion_recovery, ir_null_ti, mprage,
                                   signed_signal, spgr, spin_echo, synthesize)
from phyjax.physics.tissues import TISSUES, TissueParameters, tissue_array, tissue_parameters

__all__ = [
    "ScannerEffects", "b1_field", "bias_field", "rician_noise", "sample_bias_coefficients",
    "slice_profile", "ENCODING_SIZE", "SEQUENCES", "Protocol", "encode", "from_sidecar",
    "infer_sequence", "ernst_angle", "inversion_recovery", "ir_null_ti", "mprage",
    "signed_signal", "spgr", "spin_echo", "synthesize", "TISSUES", "TissueParameters",
    "tissue_array", "tissue_parameters",
]
