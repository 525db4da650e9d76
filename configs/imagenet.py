r"""ResNet-50 on ImageNet with the standard recipe, and the dynamics tracker on.

  python train.py --config=configs/imagenet.py --workdir=runs/imagenet_resnet50 \
      --config.data.path=/data/imagenet      # <path>/train/<class>/*.JPEG, <path>/test/...

The recipe is the one of Goyal et al. 2017, the Flax ImageNet example and big_vision's ResNet
configs: SGD momentum 0.9, learning rate 0.1 * batch / 256 with a 5-epoch linear warm-up then
cosine decay, weight decay 1e-4, label smoothing 0.1, 90 epochs, bfloat16 compute. The data
streams (data/streaming.py): each process decodes only its share of every global batch,
random-resized crops to 224 on the host, flips and normalises inside the jitted step; the
evaluation resizes the shorter side to 256 and centre-crops 224. The published network
(model_args.stem='imagenet': 7x7 stem and max-pool, 25,557,032 parameters).

Arguments: model (resnet18 | resnet34 | resnet50 | densenet121 | mobilenetv2 | vgg16),
batch (the global batch; the learning rate follows it), size (the crop side, 224), every (the
step window's metrics every n steps, 10), workers (grain's decoding processes per host, 0: in
the training process; on a pod host, most of its cores).

The batches come from grain (`data.loader='grain'`, data/grain_batches.py). For a TFDS dataset
prepared as ArrayRecord instead of a folder: --config.data.source=tfds
--config.data.name=imagenet2012 --config.data.tfds_data_dir=<dir>.
On this CPU, two steps on a folder of generated images (tests/test_streaming.py does this):

  python train.py --config=configs/imagenet.py:batch=8,size=64,every=1 --workdir=/tmp/imagenet \
      --config.data.path=/tmp/images --config.num_train_steps=2 --config.dynamics.probe_size=8

On a pod the same file runs unchanged (train.py initialises jax.distributed); what a pod's
step needs in memory per chip is in docs/pod.md (benchmarks/pod_compile.py).
"""

from configs import common

NUM_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012's training split (benchmarks/pod_compile.py)
NUM_CLASSES = 1000


def get_config(arg=''):
  args = common.parse_arg(arg, model='resnet50', batch=1024, size=224, every=10, workers=0)
  config = common.base_config()
  config.model = args.model
  config.model_args.stem = 'imagenet'  # at any crop size: this is the ImageNet network
  config.dtype = 'bfloat16'

  config.data.source = 'image_folder'
  config.data.streaming = True
  config.data.loader = 'grain'
  config.data.workers = args.workers
  config.data.path = ''
  config.data.image_size = args.size  # the host crops to it; the step sees size x size
  config.image_size = 0
  config.crop_padding = 0  # random-resized crop on the host instead of pad-and-crop
  config.flip = True

  config.batch_size = args.batch
  config.eval_batch_size = args.batch
  config.num_epochs = 90
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.learning_rate = 0.1 * args.batch / 256
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_epochs = 5.0
  config.label_smoothing = 0.1

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000

  # The tracker: the step window's metrics every `every` steps (its signals are recorded every
  # step) and the probe batch once per epoch. Every 10 steps: the window evaluation with its
  # 39 surrogates is most of the tracker's bytes on a TPU (164 MB per evaluation for ResNet-50's
  # 17 taps), 1.55% of a v5e chip's step bytes if run every step at 16 images per chip, 0.38%
  # every 10, and within the compiler's noise of nothing in its cycles (-0.08%)
  # (benchmarks/bench_tracker_hlo.py); a 90-epoch run still has about 2,800 windows.
  config.dynamics.enabled = True
  config.dynamics.every_steps = args.every
  config.dynamics.probe_size = min(1024, args.batch)
  return config
