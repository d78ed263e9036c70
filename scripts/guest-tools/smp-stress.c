/*
 * smp-stress: a userspace workload for an SMP test guest that checks what a broken VMM or
 * host KVM corrupts first: per-thread state (TLS through the FS base, registers across
 * preemption and migration between vCPUs) and process creation.
 *
 *   smp-stress THREADS ROUNDS
 *
 * Starts THREADS threads; each runs ROUNDS rounds of: write a thread-specific pattern into
 * its __thread array and a stack array, yield (so threads migrate between vCPUs), allocate
 * and free memory (glibc's per-thread arenas live behind TLS), then check both arrays and
 * errno (also TLS). Meanwhile the main thread forks ROUNDS children that exec /bin/true (or
 * exit at once if there is none) and reaps them.
 * Prints "SMP-STRESS OK threads=N rounds=M forks=F" and exits 0, or "SMP-STRESS FAIL: ..." and
 * exits 1 at the first mismatch. A guest-side segfault kills it with SIGSEGV (the shell prints
 * "Segmentation fault").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORDS 64

static __thread uint64_t tls_words[WORDS];
static __thread uint64_t tls_id;
static int rounds;
static volatile int failed;

static uint64_t pattern(uint64_t id, int round, int i)
{
	uint64_t x = (id + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)round << 32 ^ (uint64_t)i;
	x ^= x >> 29;
	return x * 0xbf58476d1ce4e5b9ULL;
}

static void *worker(void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg;
	uint64_t stack_words[WORDS];

	tls_id = id;
	for (int r = 0; r < rounds && !failed; r++) {
		for (int i = 0; i < WORDS; i++) {
			tls_words[i] = pattern(id, r, i);
			stack_words[i] = ~tls_words[i];
		}
		errno = (int)(id * 1000 + (uint64_t)r % 1000);
		sched_yield();
		void *p = malloc(1024 + (size_t)r % 4096);
		if (!p) {
			fprintf(stderr, "SMP-STRESS FAIL: malloc in thread %llu\n",
				(unsigned long long)id);
			failed = 1;
			break;
		}
		memset(p, (int)id, 64);
		free(p);
		if (tls_id != id) {
			fprintf(stderr, "SMP-STRESS FAIL: thread %llu sees tls_id %llu (round %d)\n",
				(unsigned long long)id, (unsigned long long)tls_id, r);
			failed = 1;
			break;
		}
		for (int i = 0; i < WORDS; i++) {
			if (tls_words[i] != pattern(id, r, i) || stack_words[i] != ~pattern(id, r, i)) {
				fprintf(stderr,
					"SMP-STRESS FAIL: thread %llu word %d round %d: tls %#llx stack %#llx\n",
					(unsigned long long)id, i, r,
					(unsigned long long)tls_words[i],
					(unsigned long long)stack_words[i]);
				failed = 1;
				break;
			}
		}
		if (errno != (int)(id * 1000 + (uint64_t)r % 1000)) {
			fprintf(stderr, "SMP-STRESS FAIL: thread %llu errno %d (round %d)\n",
				(unsigned long long)id, errno, r);
			failed = 1;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: smp-stress THREADS ROUNDS\n");
		return 2;
	}
	int nthreads = atoi(argv[1]);
	rounds = atoi(argv[2]);
	if (nthreads < 1 || nthreads > 64 || rounds < 1) {
		fprintf(stderr, "smp-stress: THREADS must be 1..64, ROUNDS >= 1\n");
		return 2;
	}
	pthread_t t[64];
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i) != 0) {
			fprintf(stderr, "SMP-STRESS FAIL: pthread_create\n");
			return 1;
		}
	}
	int forks = 0;
	for (int r = 0; r < rounds && !failed; r++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "SMP-STRESS FAIL: fork: %s\n", strerror(errno));
			failed = 1;
			break;
		}
		if (pid == 0) {
			execl("/bin/true", "true", (char *)NULL);
			_exit(0);
		}
		int status;
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "SMP-STRESS FAIL: child %d ended with status %#x\n", pid, status);
			failed = 1;
			break;
		}
		forks++;
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	if (failed)
		return 1;
	printf("SMP-STRESS OK threads=%d rounds=%d forks=%d\n", nthreads, rounds, forks);
	return 0;
}
