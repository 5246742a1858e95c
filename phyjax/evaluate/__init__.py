"""Evaluation: image metrics (SSIM/PSNR/NRMSE), tissue segmentation (ANTs Atropos or DIPY HMRF), overlap
(Dice/IoU/F1/precision/recall) and volumes (differences, coefficient of variation across sites),
radiomic site differences and site classifier, and the report tables and figures."""
