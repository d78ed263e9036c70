/*
 * vsock-tool: a tiny static test program for the microVM guest (which has no vsock tools).
 *
 *   vsock-tool listen PORT        accept one connection on vsock PORT, read until EOF,
 *                                 reply "pong:<what was read>", close; prints "SERVED: <data>"
 *   vsock-tool connect CID PORT MSG
 *                                 connect to CID:PORT, send MSG, half-close, read the reply
 *                                 until EOF; prints "REPLY: <reply>"
 *
 * Exit status 0 on success, 1 on any failure (with a message on stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_DATA 65536

static int fail(const char *what)
{
	fprintf(stderr, "vsock-tool: %s: %s\n", what, strerror(errno));
	return 1;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads until EOF (or the buffer is full); returns the length or -1. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
	size_t got = 0;
	while (got < cap) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int do_listen(unsigned port)
{
	static char data[MAX_DATA + 1];
	static char reply[MAX_DATA + 6];
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int l = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (l < 0)
		return fail("socket");
	if (bind(l, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("bind");
	if (listen(l, 4) < 0)
		return fail("listen");
	printf("LISTENING: %u\n", port);
	fflush(stdout);
	int c = accept(l, NULL, NULL);
	if (c < 0)
		return fail("accept");
	ssize_t n = read_all(c, data, MAX_DATA);
	if (n < 0)
		return fail("read");
	data[n] = 0;
	int len = snprintf(reply, sizeof(reply), "pong:%s", data);
	if (write_all(c, reply, (size_t)len) < 0)
		return fail("write");
	close(c);
	close(l);
	printf("SERVED: %s\n", data);
	return 0;
}

static int do_connect(unsigned cid, unsigned port, const char *msg)
{
	static char reply[MAX_DATA + 1];
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		return fail("socket");
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("connect");
	if (write_all(s, msg, strlen(msg)) < 0)
		return fail("write");
	if (shutdown(s, SHUT_WR) < 0)
		return fail("shutdown");
	ssize_t n = read_all(s, reply, MAX_DATA);
	if (n < 0)
		return fail("read");
	reply[n] = 0;
	close(s);
	printf("REPLY: %s\n", reply);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "listen") == 0)
		return do_listen((unsigned)strtoul(argv[2], NULL, 0));
	if (argc == 5 && strcmp(argv[1], "connect") == 0)
		return do_connect((unsigned)strtoul(argv[2], NULL, 0),
				  (unsigned)strtoul(argv[3], NULL, 0), argv[4]);
	fprintf(stderr, "usage: vsock-tool listen PORT | connect CID PORT MSG\n");
	return 2;
}
