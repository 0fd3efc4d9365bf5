/*
 * kvmini tiny guest: entry points, boot page tables, GDT, PVH note, stack.
 * Assembled as part of main.rs via global_asm! (AT&T syntax).
 *
 * Two ways in, one way on:
 *
 *  _start (0x100000, the ELF e_entry): the Linux 64-bit boot protocol, as used
 *    for a vmlinux. The VMM has already put the CPU in long mode with its own
 *    identity-mapped page tables (0..4 GiB), a flat 64-bit code segment,
 *    CR4.OSFXSR|OSXMMEXCPT (SSE usable), IF=0, and rsi = guest-physical
 *    address of struct boot_params (the "zero page"). We do not trust the
 *    VMM's stack (it may not even give one).
 *
 *  pvh_start (named by the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY): the PVH
 *    boot protocol, used by QEMU -kernel and by linux-loader's PVH path. The
 *    CPU is in 32-bit protected mode, paging off, flat segments, IF=0,
 *    ebx = physical address of struct hvm_start_info. We build long mode
 *    ourselves: static identity page tables (0..4 GiB, 2 MiB pages), PAE, SSE,
 *    EFER.LME, paging, our own GDT, far jump to 64-bit code.
 *
 *  mb_start: the multiboot (version 1) entry, named by the multiboot header
 *    below. Only the multiboot build of the guest (build.rs: an ELF32 copy
 *    whose e_entry is mb_start) has a valid header; the ELF64 build has it
 *    blanked, so that QEMU and kvmini keep booting that one as PVH/Linux.
 *    The CPU is as for PVH, with eax = 0x2BADB002 and ebx = the multiboot
 *    information; then the PVH path, with kind 2 (or 3: a wrong magic).
 *
 *  All then run common64: own stack, zero .bss, call
 *    kvmini_main(info_addr: u64, kind: u64), kind 0 = boot_params, 1 = PVH,
 *    2 = multiboot, 3 = multiboot entry with a wrong magic in eax.
 */

/* ---------------------------------------------------------------- entry */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    movq    %rsi, %rdi              /* arg0: struct boot_params * */
    xorl    %esi, %esi              /* arg1: BOOT_KIND_LINUX = 0 */
    jmp     common64

/*
 * The multiboot header: magic, flags (bit 0: page-aligned modules, bit 1:
 * memory information), checksum. 4-byte aligned within the first 8 KiB of
 * the file. build.rs finds it by its magic and checksum, blanks it in the
 * ELF64 build and keeps it in the multiboot build.
 */
    .balign 4
    .globl multiboot_header
multiboot_header:
    .long   0x1BADB002
    .long   0x00000003
    .long   -(0x1BADB002 + 0x00000003)

    .code32
    .globl mb_start
mb_start:
    movl    $2, %ebp                /* BOOT_KIND_MULTIBOOT */
    cmpl    $0x2BADB002, %eax
    je      enter32
    movl    $3, %ebp                /* BOOT_KIND_MULTIBOOT_BAD_MAGIC */
    jmp     enter32

    .globl pvh_start
pvh_start:
    movl    $1, %ebp                /* BOOT_KIND_PVH */
enter32:
    cli
    cld
    /* ebx = the boot information (hvm_start_info or multiboot info), ebp =
     * the kind; both kept until long mode. */
    movl    $pvh_pml4, %eax
    movl    %eax, %cr3
    movl    %cr4, %eax
    orl     $0x620, %eax            /* PAE (bit 5) | OSFXSR (9) | OSXMMEXCPT (10) */
    movl    %eax, %cr4
    movl    $0xC0000080, %ecx       /* IA32_EFER */
    rdmsr
    orl     $0x100, %eax            /* LME (bit 8) */
    wrmsr
    movl    %cr0, %eax
    andl    $~0x4, %eax             /* clear EM: SSE must not trap */
    orl     $0x80010033, %eax       /* PG | WP | NE | ET | MP | PE */
    movl    %eax, %cr0              /* long mode is now active (LMA=1) */
    lgdt    pvh_gdt_ptr
    ljmp    $0x08, $pvh_long        /* load the 64-bit code segment */

    .code64
pvh_long:
    movl    $0x10, %eax             /* flat data segment */
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs
    movl    %ebx, %edi              /* arg0: the boot information (zero-extended) */
    movl    %ebp, %esi              /* arg1: the kind */

common64:
    leaq    __stack_top(%rip), %rsp /* our own stack, 16-byte aligned */
    xorl    %ebp, %ebp
    movq    %rdi, %r12
    movq    %rsi, %r13
    leaq    __bss_start(%rip), %rdi /* zero .bss (normally empty) */
    leaq    __bss_end(%rip), %rcx
    subq    %rdi, %rcx
    xorl    %eax, %eax
    rep stosb
    movq    %r12, %rdi
    movq    %r13, %rsi
    call    kvmini_main             /* never returns */
1:  cli
    hlt
    jmp     1b

/* ------------------------------------------------- PVH boot page tables */
/*
 * Only used on the PVH path (the 64-bit entry runs on the VMM's tables).
 * Static data, so no run-time loop: PML4[0] -> PDPT, PDPT[0..4] -> 4 PDs,
 * 2048 PD entries of 2 MiB (P|RW|PS) identity-mapping 0..4 GiB.
 */
    .section .data.pagetables, "aw"
    .balign 4096
pvh_pml4:
    .quad   pvh_pdpt + 0x3          /* P | RW */
    .fill   511, 8, 0
pvh_pdpt:
    .quad   pvh_pd + 0x0003
    .quad   pvh_pd + 0x1003
    .quad   pvh_pd + 0x2003
    .quad   pvh_pd + 0x3003
    .fill   508, 8, 0
pvh_pd:
    .set    pvh_pd_addr, 0
    .rept   2048
    .quad   pvh_pd_addr + 0x83      /* P | RW | PS (2 MiB page) */
    .set    pvh_pd_addr, pvh_pd_addr + 0x200000
    .endr

/* ------------------------------------------------------------ PVH GDT */
    .section .data, "aw"
    .balign 8
pvh_gdt:
    .quad   0                       /* 0x00: null */
    .quad   0x00af9b000000ffff      /* 0x08: 64-bit code, DPL0, L=1, accessed */
    .quad   0x00cf93000000ffff      /* 0x10: flat data, DPL0, accessed */
pvh_gdt_end:
    .balign 4
    .word   0                       /* pad so the base below is 4-aligned */
pvh_gdt_ptr:
    .word   pvh_gdt_end - pvh_gdt - 1
    .long   pvh_gdt                 /* 32-bit base: lgdt runs in 32-bit mode */

/* ------------------------------------------------------------ PVH note */
/*
 * Elf note: namesz=4 ("Xen\0"), descsz=4, type=18 (XEN_ELFNOTE_PHYS32_ENTRY),
 * desc = 32-bit physical address of pvh_start.
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long   4
    .long   4
    .long   18
    .asciz  "Xen"
    .balign 4
    .long   pvh_start

/* --------------------------------------------------------------- stack */
    .section .stack, "aw", @nobits
    .balign 16
    .skip   32768
    .globl __stack_top
__stack_top:

    .text
    .code64
