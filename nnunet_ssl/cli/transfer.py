"""``nnunet-ssl-transfer``: SSL checkpoint -> weights for ``nnUNetv2_train -pretrained_weights``."""
from __future__ import annotations

import argparse
import sys

from nnunet_ssl.errors import UserError

# the names of nnunet_ssl.transfer.ARCHITECTURE_SETTINGS, here so that --help imports nothing heavy
ARCHITECTURE_SETTINGS = ("network_class", "strides", "kernel_sizes", "conv_op", "norm_op", "nonlin")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet-ssl-transfer",
        description="Put the encoder of an SSL checkpoint (nnUNetTrainerDeSD, a pretext trainer, or a stock "
                    "nnUNetTrainer checkpoint such as one trained on the ASPECTS-zone pretext dataset) into the network of a target "
                    "dataset's plans and write a checkpoint that stock `nnUNetv2_train TARGET CONFIGURATION "
                    "FOLD -p PLANS -pretrained_weights OUTPUT.pth` accepts. Decoder (unless --decoder) and "
                    "segmentation layers are initialised as nnU-Net initialises them.")
    p.add_argument("ssl_checkpoint",
                   help="checkpoint_final.pth (or _best/_latest) of the SSL training, or a checkpoint of another "
                        "SSL framework with an 'nnssl_adaptation_plan' entry, or of a stock nnU-Net training (e.g. on "
                        "the zones of nnunet-ssl prepare-aspects), whose encoder matches the target")
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="target plans identifier [nnUNetPlans]")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="target configuration [3d_fullres]")
    p.add_argument("-o", "--output", required=True, help="output .pth file")
    p.add_argument("--student", action="store_true",
                   help="take the student encoder instead of the EMA teacher (the default)")
    p.add_argument("--in-channels-rule", choices=("copy", "mean", "zero"), default=None,
                   help="initialise the first convolution when the target has another number of input channels "
                        "than the pretrained encoder (e.g. pretrained on CT, fine-tuned on CT + difference image): "
                        "copy = repeat the pretrained kernel over the channels, scaled by old/new channel count; "
                        "mean = the mean kernel in every channel, scaled by old/new; zero = keep the shared "
                        "channels' kernels and start new channels at zero. Default: refuse a difference")
    p.add_argument("--allow-architecture-difference", nargs="+", default=[], metavar="SETTING",
                   choices=ARCHITECTURE_SETTINGS,
                   help="transfer although these architecture settings of the SSL checkpoint and the target plans "
                        f"differ ({', '.join(ARCHITECTURE_SETTINGS)}); by default any difference is refused, "
                        "since the weights then compute something else than they were trained for")
    p.add_argument("--decoder", action="store_true",
                   help="also take the pretrained decoder (all but its output layers), for methods that train "
                        "one: the restoration methods (MAE, Models Genesis, in-painting), CM-UNet and stock "
                        "nnU-Net checkpoints (e.g. the ASPECTS-zone network); refused for the others")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUTPUT if it exists (never the SSL checkpoint itself)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from nnunet_ssl.transfer import transfer

        report = transfer(args.ssl_checkpoint, args.dataset, args.output, args.plans, args.configuration,
                          "student" if args.student else "teacher", args.force, args.in_channels_rule,
                          args.allow_architecture_difference, decoder=args.decoder)
    except UserError as e:
        print(f"nnunet-ssl-transfer: error: {e}", file=sys.stderr)
        return 2
    if report.in_channels:
        print(f"Input channels: pretrained {report.in_channels[0]}, target {report.in_channels[1]}; first "
              f"convolution initialised with rule '{report.in_channels_rule}'.")
    decoder = f" and the decoder ({report.n_decoder_tensors} tensors)" if report.n_decoder_tensors else ""
    print(f"Wrote {report.output}: {report.source} encoder ({report.n_encoder_tensors} tensors){decoder} in a "
          f"{report.n_network_tensors}-tensor network.\nUse it with: nnUNetv2_train {args.dataset} "
          f"{args.configuration} FOLD -p {args.plans} -pretrained_weights {report.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
