//! Owner-only files on Windows: a protected DACL naming the current user only, and the
//! check that refuses a file others can read (the ACL counterpart of mode 0600).

use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, RawHandle};
use std::path::Path;
use std::ptr;

use windows_sys::Win32::Foundation::{
    CloseHandle, GENERIC_ALL, GENERIC_READ, GENERIC_WRITE, HANDLE, HLOCAL, INVALID_HANDLE_VALUE,
    LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, GetSecurityInfo, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_REVISION, ACL_SIZE_INFORMATION, AclSizeInformation,
    AddAccessAllowedAce, CreateWellKnownSid, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
    GetAclInformation, GetLengthSid, GetTokenInformation, INHERIT_ONLY_ACE, InitializeAcl,
    InitializeSecurityDescriptor, PSECURITY_DESCRIPTOR, PSID, SE_DACL_PROTECTED,
    SECURITY_ATTRIBUTES, SECURITY_DESCRIPTOR, SECURITY_MAX_SID_SIZE, SetSecurityDescriptorControl,
    SetSecurityDescriptorDacl, TOKEN_QUERY, TOKEN_USER, TokenUser, WELL_KNOWN_SID_TYPE,
    WinBuiltinAdministratorsSid, WinLocalSystemSid,
};
use windows_sys::Win32::Storage::FileSystem::{
    CREATE_NEW, CreateFileW, FILE_ALL_ACCESS, FILE_ATTRIBUTE_NORMAL, FILE_READ_DATA,
};
use windows_sys::Win32::System::SystemServices::{
    ACCESS_ALLOWED_ACE_TYPE, SECURITY_DESCRIPTOR_REVISION,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// A SID in a buffer aligned as a SID must be (its sub-authorities are `u32`s).
struct Sid(Vec<u32>);

impl Sid {
    fn as_psid(&self) -> PSID {
        self.0.as_ptr() as PSID
    }

    /// Copies the SID at `sid`.
    ///
    /// # Safety
    /// `sid` must point at a valid SID.
    unsafe fn copy_of(sid: PSID) -> Self {
        // SAFETY: the caller passes a valid SID; its length is what GetLengthSid says.
        let len = unsafe { GetLengthSid(sid) } as usize;
        let mut buf = vec![0u32; len.div_ceil(4)];
        // SAFETY: `buf` holds at least `len` bytes and does not overlap the source.
        unsafe { ptr::copy_nonoverlapping(sid as *const u8, buf.as_mut_ptr() as *mut u8, len) };
        Self(buf)
    }

    fn well_known(kind: WELL_KNOWN_SID_TYPE) -> io::Result<Self> {
        let mut buf = vec![0u32; (SECURITY_MAX_SID_SIZE as usize).div_ceil(4)];
        let mut size = SECURITY_MAX_SID_SIZE;
        // SAFETY: `buf` holds `size` bytes, the most any SID takes.
        let ok = unsafe {
            CreateWellKnownSid(kind, ptr::null_mut(), buf.as_mut_ptr() as PSID, &mut size)
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(buf))
    }

    /// The user this process runs as.
    fn current_user() -> io::Result<Self> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: the pseudo-handle of this process; `token` receives a handle we close.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            let mut len = 0u32;
            // SAFETY: a size query: no buffer, `len` receives the size needed.
            unsafe { GetTokenInformation(token, TokenUser, ptr::null_mut(), 0, &mut len) };
            let mut buf = vec![0u64; (len as usize).div_ceil(8)];
            // SAFETY: `buf` holds `len` bytes, aligned for TOKEN_USER.
            let ok = unsafe {
                GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len)
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: GetTokenInformation wrote a TOKEN_USER whose SID lives in `buf`.
            Ok(unsafe { Self::copy_of((*(buf.as_ptr() as *const TOKEN_USER)).User.Sid) })
        })();
        // SAFETY: `token` was opened above and is closed once.
        unsafe { CloseHandle(token) };
        result
    }
}

/// Creates a new file at `path` (failing if one exists) whose DACL has one entry, the
/// current user with full control, and inherits nothing from its folder. The descriptor is
/// given to `CreateFileW`, so the file never exists under any other ACL.
pub(super) fn create_new_private(path: &Path) -> io::Result<File> {
    let user = Sid::current_user()?;
    // SAFETY: `user` holds a valid SID.
    let sid_len = unsafe { GetLengthSid(user.as_psid()) } as usize;
    let acl_len = size_of::<ACL>() + size_of::<ACCESS_ALLOWED_ACE>() - size_of::<u32>() + sid_len;
    let mut acl = vec![0u32; acl_len.div_ceil(4)];
    let acl_len = (acl.len() * 4) as u32;
    let pacl = acl.as_mut_ptr() as *mut ACL;
    let mut sd = SECURITY_DESCRIPTOR::default();
    let psd: PSECURITY_DESCRIPTOR = (&mut sd as *mut SECURITY_DESCRIPTOR).cast();
    // SAFETY: `acl` holds `acl_len` bytes, enough for the header and one entry for `user`;
    // `sd` is an absolute descriptor pointing at `acl`, both alive until CreateFileW returns.
    let ok = unsafe {
        InitializeAcl(pacl, acl_len, ACL_REVISION) != 0
            && AddAccessAllowedAce(pacl, ACL_REVISION, FILE_ALL_ACCESS, user.as_psid()) != 0
            && InitializeSecurityDescriptor(psd, SECURITY_DESCRIPTOR_REVISION) != 0
            && SetSecurityDescriptorDacl(psd, 1, pacl, 0) != 0
            && SetSecurityDescriptorControl(psd, SE_DACL_PROTECTED, SE_DACL_PROTECTED) != 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    let attrs = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: psd,
        bInheritHandle: 0,
    };
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    // SAFETY: a NUL-terminated path and the attributes above; the handle is checked.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_WRITE,
            0,
            &attrs,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle CreateFileW just opened, owned by the File from here on.
    Ok(unsafe { File::from_raw_handle(handle as RawHandle) })
}

/// The security descriptor GetSecurityInfo allocated, freed on drop.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by GetSecurityInfo with LocalAlloc, freed once.
        unsafe { LocalFree(self.0 as HLOCAL) };
    }
}

/// Who, other than the current user, SYSTEM and the Administrators, may read the file
/// (a SID string, or "everyone" for a file without a DACL); `None` when nobody.
pub(super) fn foreign_reader(file: &File) -> io::Result<Option<String>> {
    let mut dacl: *mut ACL = ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: an open handle (read access includes READ_CONTROL); the out pointers are ours.
    let err = unsafe {
        GetSecurityInfo(
            file.as_raw_handle() as HANDLE,
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            &mut dacl,
            ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let _sd = Descriptor(sd);
    if dacl.is_null() {
        return Ok(Some("everyone (it has no DACL)".into()));
    }
    let trusted = [
        Sid::current_user()?,
        Sid::well_known(WinLocalSystemSid)?,
        Sid::well_known(WinBuiltinAdministratorsSid)?,
    ];
    let mut info = ACL_SIZE_INFORMATION::default();
    // SAFETY: `dacl` points into `sd`, alive until `_sd` drops; `info` is the size asked.
    let ok = unsafe {
        GetAclInformation(
            dacl,
            (&mut info as *mut ACL_SIZE_INFORMATION).cast(),
            size_of::<ACL_SIZE_INFORMATION>() as u32,
            AclSizeInformation,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    const READS: u32 = FILE_READ_DATA | GENERIC_READ | GENERIC_ALL;
    for i in 0..info.AceCount {
        let mut ace: *mut core::ffi::c_void = ptr::null_mut();
        // SAFETY: `i` is below the ACL's entry count.
        if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every entry starts with an ACE_HEADER.
        let header = unsafe { *(ace as *const ACE_HEADER) };
        if u32::from(header.AceType) != ACCESS_ALLOWED_ACE_TYPE
            || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
        {
            continue; // denials, and entries only for children
        }
        let allowed = ace as *const ACCESS_ALLOWED_ACE;
        // SAFETY: an access-allowed entry: its mask, then its SID from `SidStart` on.
        let (mask, sid) = unsafe { ((*allowed).Mask, ptr::addr_of!((*allowed).SidStart) as PSID) };
        if mask & READS == 0 {
            continue;
        }
        // SAFETY: both are valid SIDs.
        if trusted
            .iter()
            .any(|t| unsafe { EqualSid(t.as_psid(), sid) } != 0)
        {
            continue;
        }
        return Ok(Some(sid_string(sid)));
    }
    Ok(None)
}

/// `S-1-…` for a SID (what `icacls` shows for an unnamed one).
fn sid_string(sid: PSID) -> String {
    let mut wide: *mut u16 = ptr::null_mut();
    // SAFETY: a valid SID; `wide` receives a LocalAlloc'd string we free.
    if unsafe { ConvertSidToStringSidW(sid, &mut wide) } == 0 || wide.is_null() {
        return "another account".into();
    }
    // SAFETY: a NUL-terminated UTF-16 string from ConvertSidToStringSidW.
    let s = unsafe {
        let len = (0..).take_while(|&i| *wide.add(i) != 0).count();
        String::from_utf16_lossy(std::slice::from_raw_parts(wide, len))
    };
    // SAFETY: allocated by ConvertSidToStringSidW, freed once.
    unsafe { LocalFree(wide as HLOCAL) };
    match s.as_str() {
        "S-1-1-0" => "everyone (S-1-1-0)".into(),
        "S-1-5-32-545" => "all users (S-1-5-32-545)".into(),
        "S-1-5-11" => "all authenticated users (S-1-5-11)".into(),
        _ => s,
    }
}
