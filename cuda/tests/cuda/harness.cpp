// Runs the generated CUDA kernels under emulator.h. The test writes `microgpt.cu` (the rendered
// source) and `ops.inc` (the list of its per-op kernels) beside this file's copy.
//
// harness WEIGHTS MODE [ARGS]; WEIGHTS: the device floats (the arranged weights, then the prefix
// table), little-endian f32.
//   step modes (naive, warp, lanes, lanes-table, thread): stdin has lines "tok pos r_bits" (r as
//   its f32 bits); each prints "next logit0 logit1 ..." (next is -1 for naive, which leaves the
//   draw to the host);
//   persistent WARPS STREAMS STEPS LAUNCHES (WARPS per block: 1 runs mg_persistent, more
//   mg_streams_warp, as the host does); persistent-table 1 STREAMS STEPS LAUNCHES
//   (mg_persistent_table: one warp per block); streams THREADS STREAMS STEPS LAUNCHES (THREADS per
//   block: MG_STREAM_THREADS).
//   stdin has "tok pos rng" per stream; prints each launch's checksums, one line per launch.
#include "emulator.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "microgpt.cu"

typedef void (*OpKernel)(const float*, float*, int, int);
static const OpKernel OPS[] = {
#include "ops.inc"
};

static std::vector<float> read_weights(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::perror(path);
        std::exit(2);
    }
    std::vector<float> w(MG_DEVICE_FLOATS);
    if (std::fread(w.data(), sizeof(float), w.size(), f) != w.size() || std::fgetc(f) != EOF) {
        std::fprintf(stderr, "%s: not %d floats\n", path, MG_DEVICE_FLOATS);
        std::exit(2);
    }
    std::fclose(f);
    return w;
}

static void print_logits(int next, const float* logits) {
    std::printf("%d", next);
    for (int i = 0; i < MG_VOCAB; i++) std::printf(" %.9g", logits[i]);
    std::printf("\n");
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: harness WEIGHTS MODE [ARGS]\n");
        return 2;
    }
    const std::vector<float> w = read_weights(argv[1]);
    const std::string mode = argv[2];
    // The sampling temperature, when not the kernels' default (as the host sets it).
    if (const char* t = std::getenv("MG_TEMPERATURE")) {
        const float temperature = std::strtof(t, nullptr);
        launch(1, 1, [&] { mg_set_temperature(temperature); });
    }
    if (mode == "naive" || mode == "warp" || mode == "lanes" || mode == "lanes-table" || mode == "thread") {
        std::vector<float> scratch(MG_LANE_SCRATCH, 0.0f), kv(MG_KV, 0.0f), logits(MG_VOCAB);
        int tok, pos;
        unsigned bits;
        while (std::scanf("%d %d %u", &tok, &pos, &bits) == 3) {
            const float r = __int_as_float(bits);
            int next = -1;
            if (mode == "naive") {
                for (OpKernel op : OPS) launch(1, 32, [&] { op(w.data(), scratch.data(), tok, pos); });
                print_logits(-1, scratch.data() + MG_S_LOGITS);
            } else if (mode == "warp") {
                launch(1, 32, [&] { mg_warp_step(w.data(), scratch.data(), tok, pos, r, &next); });
                print_logits(next, scratch.data() + MG_S_LOGITS);
            } else if (mode == "lanes") {
                launch(1, 32, [&] { mg_lanes_step(w.data(), scratch.data(), tok, pos, r, &next); });
                print_logits(next, scratch.data() + MG_S_LOGITS);
            } else if (mode == "lanes-table") {
                launch(1, 32, [&] { mg_lanes_table_step(w.data(), scratch.data(), tok, pos, r, &next); });
                print_logits(next, scratch.data() + MG_S_LOGITS);
            } else {
                launch(1, 1, [&] { mg_thread_step(w.data(), kv.data(), tok, pos, r, logits.data(), &next); });
                print_logits(next, logits.data());
            }
            std::fflush(stdout);
        }
        return 0;
    }
    const bool table = mode == "persistent-table";
    if ((mode == "persistent" || table || mode == "streams") && argc == 7) {
        const int per_block = std::atoi(argv[3]), streams = std::atoi(argv[4]);
        const long long steps = std::atoll(argv[5]);
        const int launches = std::atoi(argv[6]);
        std::vector<unsigned> state(3 * streams);
        for (auto& s : state) {
            if (std::scanf("%u", &s) != 1) return 2;
        }
        if (mode == "streams" && per_block != MG_STREAM_THREADS) {
            std::fprintf(stderr, "mg_streams runs blocks of %d threads\n", MG_STREAM_THREADS);
            return 2;
        }
        if (table && per_block != 1) {
            std::fprintf(stderr, "mode %s runs blocks of one warp\n", mode.c_str());
            return 2;
        }
        // mg_streams's KV caches interleave within whole blocks.
        const unsigned stream_blocks = (streams + MG_STREAM_THREADS - 1) / MG_STREAM_THREADS;
        std::vector<float> kv((size_t)MG_KV * MG_STREAM_THREADS * stream_blocks, 0.0f);
        std::vector<unsigned long long> sums(streams);
        for (int l = 0; l < launches; l++) {
            if (mode == "persistent" || table) {
                const unsigned blocks = (streams + per_block - 1) / per_block;
                launch(blocks, 32 * per_block, [&] {
                    if (table) {
                        mg_persistent_table(w.data(), state.data(), kv.data(), streams, steps, sums.data());
                    } else if (per_block == 1) {
                        mg_persistent(w.data(), state.data(), kv.data(), streams, steps, sums.data());
                    } else {
                        mg_streams_warp(w.data(), state.data(), kv.data(), streams, steps, sums.data());
                    }
                });
            } else {
                launch(stream_blocks, MG_STREAM_THREADS, [&] {
                    mg_streams(w.data(), state.data(), kv.data(), streams, steps, sums.data());
                });
            }
            for (int s = 0; s < streams; s++) std::printf("%s%llu", s ? " " : "", sums[s]);
            std::printf("\n");
        }
        return 0;
    }
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
}
