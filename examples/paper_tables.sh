#!/usr/bin/env bash
# Reproduce Tables 1 and 2 of the paper with drkit, given the datasets (not downloadable here).
# Expected layouts (see docs/formats.md, "Label CSV"):
#   $RECOLA/          RECOLA videos (DR training, as in the paper; any unlabelled face videos work)
#   $BP4D/Sequences/<subject>/<task>/*.jpg   and  $BP4D/AU-Intensity/AU06/F001_T1_AU06.csv ...
#   $SEMAINE/videos/<video>.avi            and  $SEMAINE/labels/<video>/<video>_{arousal,valence}.csv
# with the partitions as lists of people (BP4D subjects F001 ..., SEMAINE persons as in
# $SEMAINE/labels/persons.csv) in $SPLITS/{bp4d,semaine}_{train,devel}.txt.
set -euo pipefail
: "${RECOLA:?}" "${BP4D:?}" "${SEMAINE:?}" "${SPLITS:?}"
W=${W:-paper_run}; SIZE=${SIZE:-224}; mkdir -p "$W"

# 1. DR networks on RECOLA (T = 3 and 5, stride 2 at 25 fps; SEMAINE's 50 fps is scaled automatically):
#    the rank-loss DR, and the fixed-target comparison networks of Sec. 4.3 (the starred rows):
#    UNet(MSE) and Pix2Pix on forward (DI) and backward (BDI) dynamic images; UNet(P) too when
#    $VGG16_WEIGHTS names torchvision's ImageNet VGG-16 state dict (vgg16-397923af.pth).
drkit preprocess "$RECOLA" -o "$W/recola.zarr" --crop-size "$SIZE" --workers 4
FIXED=(mse pix2pix); [ -n "${VGG16_WEIGHTS:-}" ] && FIXED+=(perceptual)
for T in 3 5; do
  drkit train-dr "$W/recola.zarr" -o "$W/dr_T$T" --T $T --stride 2 --net-size "$SIZE" --epochs 20
  for obj in "${FIXED[@]}"; do for tgt in di bdi; do
    extra=(); if [ $obj = perceptual ]; then extra=(--perceptual-weights "$VGG16_WEIGHTS"); fi
    drkit train-dr "$W/recola.zarr" -o "$W/${obj}_${tgt}_T$T" --T $T --stride 2 --net-size "$SIZE" --epochs 20 \
      --param direct --objective $obj --target $tgt "${extra[@]}"
  done; done
done

# 2. Table 1: BP4D AU intensity (FERA 2015), MDR = image + DR(T=5), 6 channels; SI and SDR for comparison
drkit labels fera2015 "$BP4D/AU-Intensity" -o "$W/bp4d_labels.csv"                # video ids F001__T1
drkit preprocess "$BP4D/Sequences" -o "$W/bp4d.zarr" --crop-size "$SIZE" --workers 4      # same ids
drkit gen-dr "$W/bp4d.zarr" -o "$W/bp4d_mdr.zarr" --dr "$W/dr_T5"
# Fig. 4: every DR (rank loss and fixed targets) with the baselines, one table / JSON / plot
drkit rank-eval "$W/dr_T5" "$W"/*_di_T5 "$W"/*_bdi_T5 "$W/bp4d.zarr" --T 3,5,7,9 --stride 1,2,3,4 \
  --baselines identity,ranksvm,di --every 4 --json "$W/fig4_bp4d.json" --plot "$W/fig4_bp4d.png"
# SI / SDR / MDR with VGG-16 and with HG-HMR (the paper's AU network)
for arch in vgg16 hg_hmr; do for input in si sdr mdr; do
  drkit train-task "$W/bp4d_mdr.zarr" --labels "$W/bp4d_labels.csv" --missing 9 --task au --input $input --arch $arch \
    --train-people @"$SPLITS/bp4d_train.txt" --val-people @"$SPLITS/bp4d_devel.txt" -o "$W/au_${input}_$arch" --epochs 20
done; done
# starred rows: MDR built from each fixed-target DR
for ck in "$W"/*_di_T5 "$W"/*_bdi_T5; do
  n=$(basename "$ck")
  drkit gen-dr "$W/bp4d.zarr" -o "$W/bp4d_mdr_$n.zarr" --dr "$ck"
  drkit train-task "$W/bp4d_mdr_$n.zarr" --labels "$W/bp4d_labels.csv" --missing 9 --task au --input mdr --arch vgg16 \
    --train-people @"$SPLITS/bp4d_train.txt" --val-people @"$SPLITS/bp4d_devel.txt" -o "$W/au_mdr_$n" --epochs 20
done

# 3. Table 2: SEMAINE valence/arousal (AVEC 2012), MDR = image + DR(T=3) + DR(T=5), 9 channels
drkit labels avec2012 "$SEMAINE/labels" --video-suffix .avi -o "$W/semaine_labels.csv"
drkit preprocess "$SEMAINE/videos" -o "$W/semaine.zarr" --crop-size "$SIZE" --workers 4  # ids: file names (s01.avi)
drkit gen-dr "$W/semaine.zarr" -o "$W/semaine_mdr.zarr" --dr "$W/dr_T3" --dr "$W/dr_T5"
for input in si sdr mdr; do
  drkit train-task "$W/semaine_mdr.zarr" --labels "$W/semaine_labels.csv" --task affect --input $input --arch vgg16 \
    --train-people @"$SPLITS/semaine_train.txt" --val-people @"$SPLITS/semaine_devel.txt" -o "$W/va_$input" --epochs 20
done
for obj in "${FIXED[@]}"; do for tgt in di bdi; do   # starred rows: MDR of fixed-target DRs (T=3 and 5)
  drkit gen-dr "$W/semaine.zarr" -o "$W/semaine_mdr_${obj}_$tgt.zarr" --dr "$W/${obj}_${tgt}_T3" --dr "$W/${obj}_${tgt}_T5"
  drkit train-task "$W/semaine_mdr_${obj}_$tgt.zarr" --labels "$W/semaine_labels.csv" --task affect --input mdr --arch vgg16 \
    --train-people @"$SPLITS/semaine_train.txt" --val-people @"$SPLITS/semaine_devel.txt" -o "$W/va_mdr_${obj}_$tgt" --epochs 20
done; done
grep -H . "$W"/au_*/val_metrics.json "$W"/va_*/val_metrics.json | grep -E '"(icc|mse|pcc)"'
