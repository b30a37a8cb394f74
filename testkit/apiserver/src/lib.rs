//! In-memory stand-in for kube-apiserver (see README.md beside this crate).
