/*
 * The smallest useful PVH guest: entered in 32-bit protected mode (paging off) at _start, it
 * writes one line to the 8250 at 0x3f8 and resets the machine through the i8042 (0xFE to port
 * 0x64), or triple-faults where there is no i8042. scripts/bench-startup.sh times exec -> exit of a VMM running it.
 */
	.code32
	.section .text
	.globl _start
_start:
	mov	$0x3f8, %dx
	mov	$msg, %esi
1:	lodsb
	test	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:	mov	$0xfe, %al
	outb	%al, $0x64
	/* No i8042 (QEMU microvm has none): triple-fault instead, an empty IDT turns #UD into a
	 * shutdown, which VMMs with -no-reboot treat as the end of the guest. */
	lidt	null_idt
	ud2
3:	hlt
	jmp	3b

	.balign 8
null_idt:
	.word	0
	.long	0

msg:	.asciz "mini-pvh: hello from the guest\n"

/* Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit PVH entry point. */
	.section .note.Xen, "a", @note
	.balign 4
	.long	4		/* name size ("Xen\0") */
	.long	4		/* descriptor size */
	.long	18		/* type */
	.asciz	"Xen"
	.long	_start
