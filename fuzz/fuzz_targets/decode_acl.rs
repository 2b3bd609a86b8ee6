//! Extended attributes from a peer or the kernel: the same bytes are tried as
//! - an ACL in the kernel's `posix_acl_xattr` format (`Acl::decode`): it fails cleanly or
//!   decodes to an ACL that encodes back to bytes decoding to the same ACL;
//! - a postcard `Vec<Xattr>` (a peer's list), then `validate`: it answers without panicking,
//!   and a list it accepts round-trips, its ACLs included.
#![no_main]

use clustersync::fs::xattr::{Acl, AclTag, Xattr, XattrValue, map_numeric, validate};
use libfuzzer_sys::fuzz_target;

/// The ACL as the kernel would give it back: ids only, no names.
fn without_names(acl: &Acl) -> Acl {
    let mut acl = acl.clone();
    for e in &mut acl.entries {
        if let AclTag::User(q) | AclTag::Group(q) = &mut e.tag {
            q.name = None;
        }
    }
    acl
}

fuzz_target!(|data: &[u8]| {
    if let Ok(acl) = Acl::decode(data) {
        let again = Acl::decode(&acl.encode(map_numeric)).expect("an encoded ACL must decode");
        assert_eq!(again, acl, "decode(encode(acl)) != acl");
    }
    if let Ok(list) = postcard::from_bytes::<Vec<Xattr>>(data)
        && validate(&list).is_ok()
    {
        for x in &list {
            if let XattrValue::Acl(acl) = &x.value {
                let again = Acl::decode(&acl.encode(map_numeric)).expect("a valid ACL must encode");
                assert_eq!(again, without_names(acl));
            }
        }
        let bytes = postcard::to_allocvec(&list).expect("a decoded list must encode");
        let again: Vec<Xattr> = postcard::from_bytes(&bytes).expect("an encoded list must decode");
        assert_eq!(again, list);
    }
});
