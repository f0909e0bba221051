/* montecarlo: estimate pi with child dynos in the cloud.
 *
 *   montecarlo --trials N --workers W [--seed S] [--stdout FILE]
 *
 * The parent forks W child dynos of its own release with `fork run -- montecarlo
 * --child ...` (bin/fork, shipped in every slug), reads each one's result through a
 * pipe (popen), adds them up and prints the report; with --stdout it also writes the
 * report to FILE. --workers 0 does every trial in this dyno (the baseline). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static double now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

/* xorshift64*: fast, and the same stream on every machine for a seed */
static uint64_t next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static uint64_t points(uint64_t trials, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1, in = 0, i;
    for (i = 0; i < trials; i++) {
        double x = (next(&s) >> 11) * (1.0 / 9007199254740992.0);
        double y = (next(&s) >> 11) * (1.0 / 9007199254740992.0);
        if (x * x + y * y <= 1.0)
            in++;
    }
    return in;
}

static void usage(void) {
    fprintf(stderr, "usage: montecarlo --trials N --workers W [--seed S] [--stdout FILE]\n"
                    "       montecarlo --child --trials N --seed S\n");
    exit(2);
}

int main(int argc, char **argv) {
    uint64_t trials = 0, seed = 1;
    long workers = -1;
    int child = 0, i;
    const char *out = NULL;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--child"))
            child = 1;
        else if (!strcmp(argv[i], "--trials") && i + 1 < argc)
            trials = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            workers = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--stdout") && i + 1 < argc)
            out = argv[++i];
        else
            usage();
    }
    if (trials == 0)
        usage();
    if (child) { /* one worker: its share of the trials, one line on stdout */
        printf("points %llu %llu\n", (unsigned long long)points(trials, seed),
               (unsigned long long)trials);
        return 0;
    }
    if (workers < 0 || workers > 1000)
        usage();
    double start = now();
    uint64_t in = 0, done = 0;
    if (workers == 0) {
        in = points(trials, seed);
        done = trials;
    } else {
        FILE **pipes = calloc(workers, sizeof *pipes);
        for (i = 0; i < workers; i++) { /* start them all, then read them all */
            uint64_t share = trials / workers + (i < (long)(trials % workers) ? 1 : 0);
            char command[256];
            snprintf(command, sizeof command,
                     "fork run -- montecarlo --child --trials %llu --seed %llu",
                     (unsigned long long)share, (unsigned long long)(seed * 1000003 + i));
            pipes[i] = popen(command, "r");
            if (!pipes[i]) {
                perror("popen");
                return 1;
            }
        }
        for (i = 0; i < workers; i++) {
            char line[256];
            unsigned long long a = 0, b = 0;
            int found = 0;
            while (fgets(line, sizeof line, pipes[i]))
                if (sscanf(line, "points %llu %llu", &a, &b) == 2)
                    found = 1;
            int status = pclose(pipes[i]);
            if (!found || status != 0) {
                fprintf(stderr, "montecarlo: worker %d failed (status %d)\n", i, status);
                return 1;
            }
            in += a;
            done += b;
        }
    }
    double pi = 4.0 * (double)in / (double)done;
    char report[1024];
    snprintf(report, sizeof report,
             "trials   %llu\n"
             "workers  %ld\n"
             "points   %llu\n"
             "pi       %.10f\n"
             "result   %.10f\n"
             "error    %.10f\n"
             "time     %.3f s\n",
             (unsigned long long)done, workers, (unsigned long long)in, M_PI, pi,
             fabs(pi - M_PI), now() - start);
    fputs(report, stdout);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f || fputs(report, f) < 0 || fclose(f) != 0) {
            perror(out);
            return 1;
        }
    }
    return 0;
}
