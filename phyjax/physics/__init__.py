"""MR physics: units, tissue values, protocols, closed-form signals, Bloch/EPG, scanner effects."""

from phyjax.physics import bloch, epg
from phyjax.physics.mp2rage import (MP2RAGEProtocol, MPRAGEProtocol, m0_from_inv2,
                                    mp2rage_lookup_table, mp2rage_signals, mp2rage_uni,
                                    mprage_full, robust_uni,
                                    signed_inv1, t1_from_uni, t1_m0_from_mp2rage,
                                    uni_from_siemens, uni_to_siemens)
from phyjax.physics.scanner import (ScannerEffects, b1_field, bias_field, rician_noise,
                                    sample_bias_coefficients, slice_profile)
from phyjax.physics.sequences import (ENCODING_SIZE, SEQUENCES, Protocol, encode)
from phyjax.physics.signal import (bssfp, ernst_angle, inversion_recovery, ir_null_ti, mprage,
                                   signed_signal, spgr, spin_echo, synthesize, turbo_spin_echo)
from phyjax.physics.tissues import (TISSUES, TissueParameters, convert_t1, tissue_array,
                                    tissue_parameters)

__all__ = [
    "bloch", "epg", "bssfp", "turbo_spin_echo",
    "MP2RAGEProtocol", "MPRAGEProtocol", "m0_from_inv2", "mp2rage_lookup_table",
    "mp2rage_signals", "mp2rage_uni", "mprage_full",
    "robust_uni", "signed_inv1", "t1_from_uni", "t1_m0_from_mp2rage", "uni_from_siemens",
    "uni_to_siemens", "convert_t1",
    "ScannerEffects", "b1_field", "bias_field", "rician_noise", "sample_bias_coefficients",
    "slice_profile", "ENCODING_SIZE", "SEQUENCES", "Protocol", "encode",
    "ernst_angle", "inversion_recovery", "ir_null_ti", "mprage",
    "signed_signal", "spgr", "spin_echo", "synthesize", "TISSUES", "TissueParameters",
    "tissue_array", "tissue_parameters",
]
