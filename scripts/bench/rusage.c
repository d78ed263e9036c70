/*
 * rusage CMD ARGS...: runs CMD and, after it exits, prints "RUSAGE maxrss_kib=N" on stderr and
 * exits with CMD's status. Exists because a child forked from a big process (python) inherits
 * that process's RSS high-water mark in ru_maxrss; forked from this small static program, the
 * figure is the command's own peak RSS.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: rusage CMD [ARGS...]\n");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		perror(argv[1]);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0) {
		perror("wait4");
		return 2;
	}
	fprintf(stderr, "RUSAGE maxrss_kib=%ld\n", ru.ru_maxrss);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
