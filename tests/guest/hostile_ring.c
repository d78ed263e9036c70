/*
 * A hostile guest driver for the test guest (static, run as root by /init):
 * takes a virtio-pci device (modern id 0x1040+N given as argv[1] in hex) away from its
 * kernel driver, sets its queue 0 up with EVENT_IDX and the avail ring at guest-physical
 * address 0 (whatever lies there reads as a wild avail index), sets DRIVER_OK and kicks.
 * A backend must stop that queue and stay responsive. Rings live in the first 64 KiB,
 * which Linux never allocates. Prints "HOSTILE: ..." lines.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	int n = read(fd, buf, len);
	close(fd);
	return n;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	int n = write(fd, s, strlen(s));
	close(fd);
	return n;
}

static uint32_t le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

int main(int argc, char **argv)
{
	unsigned long want = argc > 1 ? strtoul(argv[1], 0, 16) : 0x1044;
	char dev[300] = "", path[400], buf[64];
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
		memset(buf, 0, sizeof buf);
		if (read_file(path, buf, sizeof buf - 1) > 0 && strtoul(buf, 0, 16) == want) {
			snprintf(dev, sizeof dev, "/sys/bus/pci/devices/%s", e->d_name);
			break;
		}
	}
	if (!dev[0]) {
		printf("HOSTILE: no device %lx\n", want);
		return 1;
	}
	uint8_t cfg[256];
	snprintf(path, sizeof path, "%s/config", dev);
	if (read_file(path, (char *)cfg, sizeof cfg) < 256) {
		printf("HOSTILE: cannot read config space\n");
		return 1;
	}
	int common_bar = -1, notify_bar = -1;
	uint32_t common_off = 0, notify_off = 0, mult = 0;
	for (int p = cfg[0x34]; p && p < 250; p = cfg[p + 1]) {
		if (cfg[p] != 0x09)
			continue;
		if (cfg[p + 3] == 1) {
			common_bar = cfg[p + 4];
			common_off = le32(cfg + p + 8);
		} else if (cfg[p + 3] == 2) {
			notify_bar = cfg[p + 4];
			notify_off = le32(cfg + p + 8);
			mult = le32(cfg + p + 16);
		}
	}
	if (common_bar < 0 || notify_bar != common_bar) {
		printf("HOSTILE: unexpected capability layout\n");
		return 1;
	}
	snprintf(path, sizeof path, "%s/driver/unbind", dev);
	write_str(path, strrchr(dev, '/') + 1);
	snprintf(path, sizeof path, "%s/enable", dev);
	write_str(path, "1");
	snprintf(path, sizeof path, "%s/resource%d", dev, common_bar);
	int fd = open(path, O_RDWR | O_SYNC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		printf("HOSTILE: cannot open %s\n", path);
		return 1;
	}
	volatile uint8_t *bar = mmap(0, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED) {
		printf("HOSTILE: cannot map %s\n", path);
		return 1;
	}
	volatile uint8_t *c = bar + common_off;
#define U8(o) (*(volatile uint8_t *)(c + (o)))
#define U16(o) (*(volatile uint16_t *)(c + (o)))
#define U32(o) (*(volatile uint32_t *)(c + (o)))
	U8(0x14) = 0; /* reset */
	while (U8(0x14) != 0)
		usleep(1000);
	U8(0x14) = 1;
	U8(0x14) = 1 | 2; /* ACKNOWLEDGE | DRIVER */
	U32(0x08) = 0;
	U32(0x0c) = 1u << 29; /* EVENT_IDX */
	U32(0x08) = 1;
	U32(0x0c) = 1; /* VERSION_1 */
	U8(0x14) = 1 | 2 | 8; /* FEATURES_OK */
	if (!(U8(0x14) & 8)) {
		printf("HOSTILE: features refused\n");
		return 1;
	}
	U16(0x16) = 0; /* queue 0 */
	U16(0x18) = 16;
	U16(0x1a) = 0xffff; /* no MSI-X vector */
	U32(0x20) = 0x1000; U32(0x24) = 0; /* descriptors */
	U32(0x28) = 0; U32(0x2c) = 0; /* avail ring at guest address 0 */
	U32(0x30) = 0x2000; U32(0x34) = 0; /* used ring */
	uint16_t qoff = U16(0x1e);
	U16(0x1c) = 1;
	U8(0x14) = 1 | 2 | 8 | 4; /* DRIVER_OK: the frontend starts the backend's ring */
	volatile uint16_t *notify = (volatile uint16_t *)(bar + notify_off + qoff * mult);
	for (int i = 0; i < 20; i++) {
		*notify = 0;
		usleep(100000);
	}
	printf("HOSTILE: queue 0 of %lx kicked with its avail ring at 0, status %#x\n", want,
	       U8(0x14));
	return 0;
}
