"""Throughput benchmark (thin script around ``ssl_derm.commands.bench``): ceiling vs ssl-derm path vs lightly path.

    python benchmarks/throughput.py --quick                      # CPU/CI, about a minute
    python benchmarks/throughput.py --method simclr --encoder resnet50 --image-size 224 --batch-size 256 \
        --steps 30 --device cuda --out benchmarks/results/throughput_simclr_resnet50.json
"""
from ssl_derm.commands.bench import main

if __name__ == "__main__":
    main()
