//! Kernel images (ELF vmlinux, PVH ELF, bzImage with linux-loader;
//! multiboot kernels with multiboot.rs) and the initramfs and modules,
//! loaded into guest memory. Formats are told apart by content.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::layout::{HIMEM_START, MMIO_GAP_START};

pub mod multiboot;
pub mod validate;

/// The tiny guest, built from guest/ by build.rs.
pub static TINY_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kvmini-guest.elf"));
/// The same guest as a multiboot kernel (an ELF32 whose entry is its
/// multiboot entry; build.rs makes it from the same link).
pub static TINY_GUEST_MULTIBOOT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kvmini-guest-multiboot.elf"));

/// Bytes of an image's start read to tell its format: a bzImage's setup
/// header, and the 8 KiB a multiboot header must lie in.
const HEAD_LEN: usize = if multiboot::SEARCH_LEN > validate::SETUP_HEADER_END {
    multiboot::SEARCH_LEN
} else {
    validate::SETUP_HEADER_END
};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
/// Offset of "HdrS" in a bzImage.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// 64-bit entry point offset from the protected-mode kernel's start.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// kvmini's own tiny guest.
    Embedded,
    File(PathBuf),
}

/// Which entry point an ELF kernel is started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// ELF: the 64-bit entry (e_entry); bzImage: its 64-bit entry.
    #[default]
    Linux64,
    /// ELF: the 32-bit entry in its PVH note.
    Pvh,
    /// Multiboot: the kernel's multiboot entry (for the built-in tiny
    /// guest, its multiboot build). A multiboot image is entered so
    /// whatever was asked.
    Multiboot,
}

/// The kernel image formats kvmini recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Elf,
    BzImage,
    /// A kernel with a multiboot (version 1) header in its first 8 KiB.
    Multiboot,
}

/// What linux-loader found wrong, said once: its errors quote their
/// sources in their own messages, each behind "Kernel Loader: ", so only
/// the innermost is kept, without that prefix.
fn loader_cause(e: &linux_loader::loader::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    let text = inner.to_string();
    text.trim_start_matches("Kernel Loader: ").to_string()
}

/// Errors loading a kernel or an initramfs. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--kernel {0}: cannot read the file")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("--kernel {0}: is a directory, not a kernel image")]
    Directory(PathBuf),
    #[error("--kernel {0}: the file is empty")]
    Empty(PathBuf),
    #[error("--kernel {0}: not a kernel image (neither an ELF nor a bzImage)")]
    UnknownFormat(PathBuf),
    #[error("--kernel {}: {}, not a kernel image: did you mean --initramfs? (a compressed kernel must be decompressed first)", .0.display(), .1)]
    LooksLikeArchive(PathBuf, &'static str),
    #[error("--kernel {0}: a 32-bit ELF without a multiboot header; kvmini boots 64-bit x86 kernels and multiboot kernels")]
    Elf32(PathBuf),
    #[error("--kernel {0}: has no multiboot header, so --boot multiboot cannot start it")]
    NotMultiboot(PathBuf),
    #[error("--module {0}: modules are for multiboot kernels; this kernel is not one (a Linux kernel takes one --initramfs)")]
    ModuleNotMultiboot(PathBuf),
    #[error("--module {0}: cannot read the file")]
    ModuleRead(PathBuf, #[source] std::io::Error),
    #[error("--module {0}: is a directory, not a file")]
    ModuleDirectory(PathBuf),
    #[error("{flag} {path}: {size} bytes do not fit in guest memory below {limit:#x} after the kernel and the modules before it (raise --memory)")]
    ModuleTooBig {
        flag: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{0} {1}: cannot copy it into guest memory")]
    ModuleCopy(&'static str, PathBuf, #[source] vm_memory::GuestMemoryError),
    #[error("--kernel {0}: an ELF for another architecture (e_machine {1}); kvmini boots x86_64 kernels")]
    WrongArch(PathBuf, u16),
    #[error("--kernel {}: invalid or truncated {:?} image: {}", .0.display(), .1, loader_cause(.2))]
    Invalid(PathBuf, Format, linux_loader::loader::Error),
    #[error("--kernel {}: {:?} image refused: {}", .0.display(), .1, .2)]
    Refused(PathBuf, Format, String),
    #[error("--kernel {path}: the image ends at {end:#x}, beyond the guest's {mem:#x} bytes of memory (raise --memory)")]
    TooBig { path: PathBuf, end: u64, mem: u64 },
    #[error("--kernel {0}: has no PVH entry note, so --boot pvh cannot start it")]
    NoPvhEntry(PathBuf),
    #[error("--initramfs {0}: cannot read the file")]
    InitramfsRead(PathBuf, #[source] std::io::Error),
    #[error("--initramfs {0}: is a directory, not an archive")]
    InitramfsDirectory(PathBuf),
    #[error("--initramfs {path}: {size} bytes do not fit in guest memory below {limit:#x} after the kernel (raise --memory)")]
    InitramfsTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("--initramfs {0}: cannot copy it into guest memory")]
    InitramfsCopy(PathBuf, #[source] vm_memory::GuestMemoryError),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: Format,
    /// The 64-bit entry point.
    pub entry64: u64,
    /// The PVH 32-bit entry point, if the image has one.
    pub pvh_entry: Option<u64>,
    /// First byte after the image.
    pub end: u64,
    pub setup_header: Option<setup_header>,
    /// For a multiboot kernel: its 32-bit entry and extent.
    pub multiboot: Option<multiboot::MultibootKernel>,
}

fn display(source: &KernelSource) -> PathBuf {
    match source {
        KernelSource::Embedded => PathBuf::from("(embedded tiny guest)"),
        KernelSource::File(p) => p.clone(),
    }
}

/// Decides the format from the first bytes of the image. A multiboot
/// header wins over the ELF it may be in, as with QEMU's -kernel: such a
/// kernel's entry is its multiboot entry.
pub fn detect(path: &Path, head: &[u8]) -> Result<Format, Error> {
    if head.is_empty() {
        return Err(Error::Empty(path.into()));
    }
    if multiboot::is_multiboot(head) {
        return Ok(Format::Multiboot);
    }
    if head.starts_with(ELF_MAGIC) {
        if head.len() < 20 {
            return Err(Error::Invalid(
                path.into(),
                Format::Elf,
                linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadElfHeader),
            ));
        }
        if head[4] != ELFCLASS64 {
            return Err(Error::Elf32(path.into()));
        }
        let machine = u16::from_le_bytes([head[18], head[19]]);
        if machine != EM_X86_64 {
            return Err(Error::WrongArch(path.into(), machine));
        }
        return Ok(Format::Elf);
    }
    if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(&BZIMAGE_MAGIC[..]) {
        return Ok(Format::BzImage);
    }
    match archive_kind(head) {
        Some(kind) => Err(Error::LooksLikeArchive(path.into(), kind)),
        None => Err(Error::UnknownFormat(path.into())),
    }
}

/// What a file that is not a kernel looks like, when it looks like what
/// people give --kernel by mistake: an initramfs (a cpio archive, often
/// compressed) or a compressed kernel.
fn archive_kind(head: &[u8]) -> Option<&'static str> {
    const KINDS: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip data"),
        (b"\xfd7zXZ\x00", "xz data"),
        (b"\x28\xb5\x2f\xfd", "zstd data"),
        (b"\x04\x22\x4d\x18", "lz4 data"),
        (b"\x02\x21\x4c\x18", "lz4 data"),
        (b"BZh", "bzip2 data"),
        (b"\x89LZO", "lzop data"),
        (b"070701", "a cpio archive (an initramfs?)"),
        (b"070702", "a cpio archive (an initramfs?)"),
        (b"070707", "a cpio archive (an initramfs?)"),
    ];
    KINDS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|&(_, kind)| kind)
}

/// The checks of validate.rs for an image of `format` whose first bytes are
/// `head`; for an ELF, its segments and the end of what it occupies.
fn check_layout<F: Read + Seek>(
    path: &Path,
    format: Format,
    head: &[u8],
    image: &mut F,
) -> Result<Option<(validate::ElfImage, u64)>, Error> {
    let refused = |rule| Error::Refused(path.into(), format, rule);
    let file_len = image
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::Read(path.into(), e))?;
    match format {
        Format::Elf => {
            let elf = validate::read_elf(image).map_err(refused)?;
            let end = validate::check_elf(&elf, file_len).map_err(refused)?;
            Ok(Some((elf, end)))
        }
        Format::BzImage => {
            validate::check_bzimage(head, file_len).map_err(refused)?;
            Ok(None)
        }
        Format::Multiboot => {
            // detect() found the header; its flags are checked here, the
            // layout when it is loaded (before anything is written).
            let header = multiboot::find_header(head)
                .ok_or_else(|| refused("its multiboot header is gone (the file changed)".into()))?;
            multiboot::check_flags(header.flags).map_err(refused)?;
            Ok(None)
        }
    }
}

fn load_image<F: Read + vm_memory::ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &mut F,
) -> Result<LoadedKernel, Error> {
    let mut head = vec![0u8; HEAD_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match image.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Read(path.into(), e)),
        }
    }
    head.truncate(filled);
    let format = detect(path, &head)?;
    let mem_end = mem.last_addr().0 + 1;
    let refused = |rule| Error::Refused(path.into(), format, rule);
    // The image against the layout first, then "too big" rather than
    // "truncated" when it lies beyond RAM.
    let elf = check_layout(path, format, &head, image)?;
    if let Some((_, end)) = &elf {
        if *end > mem_end {
            return Err(Error::TooBig {
                path: path.into(),
                end: *end,
                mem: mem_end,
            });
        }
    }
    image
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::Read(path.into(), e))?;
    let result: KernelLoaderResult = match format {
        Format::Elf => Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START))),
        Format::BzImage => BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START))),
        Format::Multiboot => return load_multiboot(mem, path, &head, image),
    }
    .map_err(|e| Error::Invalid(path.into(), format, e))?;
    if result.kernel_end > mem_end {
        return Err(Error::TooBig {
            path: path.into(),
            end: result.kernel_end,
            mem: mem_end,
        });
    }
    let entry64 = match format {
        Format::BzImage => result.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET,
        _ => result.kernel_load.0,
    };
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    // linux-loader's kernel_end leaves out segments with nothing in the
    // file (all zero fill): the end validate.rs found counts them.
    let mut end = result.kernel_end;
    if let Some((elf, elf_end)) = &elf {
        if let Some(pvh) = pvh_entry {
            validate::check_entry(elf, pvh, "the PVH entry point").map_err(refused)?;
        }
        end = end.max(*elf_end);
    }
    Ok(LoadedKernel {
        format,
        entry64,
        pvh_entry,
        end,
        setup_header: result.setup_header,
        multiboot: None,
    })
}

/// Loads a multiboot kernel (`head`: its first bytes, holding the header).
fn load_multiboot<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    path: &Path,
    head: &[u8],
    image: &mut F,
) -> Result<LoadedKernel, Error> {
    let refused = |rule| Error::Refused(path.into(), Format::Multiboot, rule);
    let header = multiboot::find_header(head)
        .ok_or_else(|| refused("its multiboot header is gone (the file changed)".into()))?;
    let mb = multiboot::load(mem, &header, image).map_err(refused)?;
    if mb.video_requested {
        log::info!("kernel: its multiboot header asks for a video mode; kvmini has no display");
    }
    Ok(LoadedKernel {
        format: Format::Multiboot,
        entry64: u64::from(mb.entry),
        pvh_entry: None,
        end: mb.end,
        setup_header: None,
        multiboot: Some(mb),
    })
}

/// A `--module PATH[,CMDLINE]` of a multiboot kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    pub path: PathBuf,
    /// What follows the path in its string in the MBI ("PATH CMDLINE").
    pub cmdline: Option<String>,
}

/// A module in guest memory, for the multiboot information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    pub start: u32,
    pub end: u32,
    pub cmdline: Vec<u8>,
}

/// The kernel, initramfs and module files, opened once by [`preflight`]
/// and kept open for the VM's life, so that a guest rebooted in place is
/// loaded again from the same files without opening anything.
pub struct BootFiles {
    kernel: Option<(PathBuf, File)>,
    initramfs: Option<(PathBuf, File)>,
    modules: Vec<(PathBuf, Vec<u8>, File)>,
    /// The built-in tiny guest, in its multiboot build.
    embedded_multiboot: bool,
}

fn read_head(p: &Path, f: &mut File) -> Result<Vec<u8>, Error> {
    let mut head = Vec::with_capacity(HEAD_LEN);
    f.take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::Read(p.into(), e))?;
    Ok(head)
}

/// What can be checked of the kernel, the initramfs and the modules
/// before guest memory or KVM exists: that they are readable files, that
/// the kernel looks like one kvmini boots and suits `boot` and the modules;
/// returns them open. [`BootFiles::load_kernel`],
/// [`BootFiles::load_initramfs`] and [`BootFiles::load_modules`] check the
/// rest.
pub fn preflight(
    kernel: &KernelSource,
    boot: BootProtocol,
    initramfs: Option<&Path>,
    modules: &[ModuleConfig],
) -> Result<BootFiles, Error> {
    let (kernel, multiboot) = match kernel {
        KernelSource::Embedded => (None, boot == BootProtocol::Multiboot),
        KernelSource::File(p) => {
            if p.is_dir() {
                return Err(Error::Directory(p.clone()));
            }
            let mut f = crate::host_file::open_regular(p).map_err(|e| Error::Read(p.clone(), e))?;
            let head = read_head(p, &mut f)?;
            let format = detect(p, &head)?;
            check_layout(p, format, &head, &mut f)?;
            if boot == BootProtocol::Multiboot && format != Format::Multiboot {
                return Err(Error::NotMultiboot(p.clone()));
            }
            (Some((p.clone(), f)), format == Format::Multiboot)
        }
    };
    if let (Some(m), false) = (modules.first(), multiboot) {
        return Err(Error::ModuleNotMultiboot(m.path.clone()));
    }
    let initramfs = match initramfs {
        None => None,
        Some(p) => {
            if p.is_dir() {
                return Err(Error::InitramfsDirectory(p.into()));
            }
            let f =
                crate::host_file::open_regular(p).map_err(|e| Error::InitramfsRead(p.into(), e))?;
            Some((p.to_path_buf(), f))
        }
    };
    let mut opened = Vec::with_capacity(modules.len());
    for m in modules {
        if m.path.is_dir() {
            return Err(Error::ModuleDirectory(m.path.clone()));
        }
        let f = crate::host_file::open_regular(&m.path)
            .map_err(|e| Error::ModuleRead(m.path.clone(), e))?;
        // "PATH CMDLINE", as GRUB and QEMU give a module's string.
        let mut cmdline = m.path.as_os_str().as_encoded_bytes().to_vec();
        if let Some(c) = &m.cmdline {
            cmdline.push(b' ');
            cmdline.extend_from_slice(c.as_bytes());
        }
        opened.push((m.path.clone(), cmdline, f));
    }
    let embedded_multiboot = multiboot && kernel.is_none();
    Ok(BootFiles {
        kernel,
        initramfs,
        modules: opened,
        embedded_multiboot,
    })
}

impl BootFiles {
    /// Uses `f` (read from its start) as the initramfs, named `name` in
    /// errors: `--exec`'s, built in memory.
    pub fn set_initramfs(&mut self, name: PathBuf, f: File) {
        self.initramfs = Some((name, f));
    }

    /// Loads the kernel (the tiny guest if none was given) into guest
    /// memory, from the start of its file.
    pub fn load_kernel(&mut self, mem: &GuestMemoryMmap) -> Result<LoadedKernel, Error> {
        match &mut self.kernel {
            None if self.embedded_multiboot => load_image(
                mem,
                Path::new("(embedded tiny guest, multiboot)"),
                &mut Cursor::new(TINY_GUEST_MULTIBOOT),
            ),
            None => load_kernel(mem, &KernelSource::Embedded),
            Some((path, f)) => {
                f.seek(SeekFrom::Start(0))
                    .map_err(|e| Error::Read(path.clone(), e))?;
                load_image(mem, path, f)
            }
        }
    }

    /// For a multiboot kernel: copies the initramfs (as the first module,
    /// its string its path) and every `--module` into guest memory, each
    /// page-aligned after the one before, starting after `kernel`.
    pub fn load_modules(
        &mut self,
        mem: &GuestMemoryMmap,
        kernel: &LoadedKernel,
    ) -> Result<Vec<LoadedModule>, Error> {
        let mem_end = mem.last_addr().0 + 1;
        let mut after = kernel.end;
        let mut loaded = Vec::new();
        let initramfs = self.initramfs.as_mut().map(|(p, f)| {
            let cmdline = p.as_os_str().as_encoded_bytes().to_vec();
            ("--initramfs", &*p, cmdline, f)
        });
        let modules = self
            .modules
            .iter_mut()
            .map(|(p, c, f)| ("--module", &*p, c.clone(), f));
        for (flag, path, cmdline, f) in initramfs.into_iter().chain(modules) {
            let size = f
                .seek(SeekFrom::End(0))
                .and_then(|size| f.seek(SeekFrom::Start(0)).map(|_| size))
                .map_err(|e| Error::ModuleRead(path.clone(), e))?;
            let too_big = || Error::ModuleTooBig {
                flag,
                path: path.clone(),
                size,
                limit: mem_end.min(MMIO_GAP_START),
            };
            let addr = multiboot::module_address(after, size, mem_end).ok_or_else(too_big)?;
            let len = usize::try_from(size).map_err(|_| too_big())?;
            mem.read_exact_volatile_from(GuestAddress(addr), f, len)
                .map_err(|e| Error::ModuleCopy(flag, path.clone(), e))?;
            after = addr + size;
            // module_address keeps it below the device hole, under 4 GiB.
            loaded.push(LoadedModule {
                start: addr as u32,
                end: after as u32,
                cmdline,
            });
        }
        Ok(loaded)
    }

    /// Copies the initramfs, if there is one, into guest memory above
    /// `kernel`; returns its address and size.
    pub fn load_initramfs(
        &mut self,
        mem: &GuestMemoryMmap,
        kernel: &LoadedKernel,
    ) -> Result<Option<(u64, u64)>, Error> {
        let Some((path, f)) = &mut self.initramfs else {
            return Ok(None);
        };
        // Its size is where its end is now (lseek: nothing to stat).
        let size = f
            .seek(SeekFrom::End(0))
            .and_then(|size| f.seek(SeekFrom::Start(0)).map(|_| size))
            .map_err(|e| Error::InitramfsRead(path.clone(), e))?;
        copy_initramfs(mem, path, f, size, kernel).map(Some)
    }
}

/// Loads the kernel into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, source: &KernelSource) -> Result<LoadedKernel, Error> {
    let path = display(source);
    match source {
        KernelSource::Embedded => load_image(mem, &path, &mut Cursor::new(TINY_GUEST)),
        KernelSource::File(_) => {
            preflight(source, BootProtocol::default(), None, &[])?.load_kernel(mem)
        }
    }
}

/// Where an initramfs of `size` bytes goes: as high as possible below
/// `limit` (and below the device hole), page-aligned, above the kernel.
pub fn initramfs_address(size: u64, kernel_end: u64, mem_end: u64, limit: u64) -> Option<u64> {
    let top = mem_end.min(MMIO_GAP_START).min(limit.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end.max(HIMEM_START)).then_some(addr)
}

/// Copies the `size` bytes of initramfs `f` into guest memory; returns
/// its address and size.
fn copy_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    f: &mut File,
    size: u64,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), Error> {
    // A bzImage says how high its initramfs may go; 64-bit ELF kernels
    // take any address below 4 GiB.
    let limit = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&l| l != 0)
        .unwrap_or(u64::from(u32::MAX));
    let mem_end = mem.last_addr().0 + 1;
    let addr =
        initramfs_address(size, kernel.end, mem_end, limit).ok_or(Error::InitramfsTooBig {
            path: path.into(),
            size,
            limit: mem_end.min(MMIO_GAP_START),
        })?;
    let len = usize::try_from(size).map_err(|_| Error::InitramfsTooBig {
        path: path.into(),
        size,
        limit: mem_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), f, len)
        .map_err(|e| Error::InitramfsCopy(path.into(), e))?;
    Ok((addr, size))
}

/// Reads `mem` back, for tests.
#[cfg(test)]
fn read_back(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("k")
    }

    #[test]
    fn detects_formats_by_content() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = ELFCLASS64;
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        assert_eq!(detect(p(), &elf).unwrap(), Format::Elf);
        elf[18] = 183; // aarch64
        assert!(matches!(detect(p(), &elf), Err(Error::WrongArch(_, 183))));
        elf[4] = 1;
        assert!(matches!(detect(p(), &elf), Err(Error::Elf32(_))));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(BZIMAGE_MAGIC);
        assert_eq!(detect(p(), &bz).unwrap(), Format::BzImage);
        assert!(matches!(detect(p(), &[]), Err(Error::Empty(_))));
        assert!(matches!(
            detect(p(), b"random bytes"),
            Err(Error::UnknownFormat(_))
        ));
    }

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let a = initramfs_address(0x1800, 0x20_0000, 128 << 20, u64::from(u32::MAX)).unwrap();
        assert_eq!(a, (128 << 20) - 0x2000);
        // A bzImage limit lowers it.
        let a = initramfs_address(0x1000, 0x20_0000, 128 << 20, 0x37ff_ffff).unwrap();
        assert_eq!(a, (128 << 20) - 0x1000);
        let a = initramfs_address(0x1000, 0x20_0000, 2 << 30, 0x37ff_ffff).unwrap();
        assert_eq!(a, 0x3800_0000 - 0x1000);
        // Large guests keep it below the device hole.
        let a = initramfs_address(0x1000, 0x20_0000, 8 << 30, u64::from(u32::MAX)).unwrap();
        assert_eq!(a, MMIO_GAP_START - 0x1000);
        // Too big: it would overlap the kernel.
        assert_eq!(
            initramfs_address(127 << 20, 0x20_0000, 128 << 20, u64::MAX),
            None
        );
        assert_eq!(
            initramfs_address(1 << 30, 0x20_0000, 128 << 20, u64::MAX),
            None
        );
    }

    #[test]
    fn tiny_guest_loads_at_1m_with_both_entries() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let k = load_kernel(&mem, &KernelSource::Embedded).unwrap();
        assert_eq!(k.format, Format::Elf);
        assert!(k.entry64 >= HIMEM_START && k.entry64 < k.end);
        assert!(k.pvh_entry.is_some(), "the tiny guest carries a PVH note");
        assert_ne!(read_back(&mem, HIMEM_START, 16), vec![0u8; 16]);
    }
}
