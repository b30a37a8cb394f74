//! Local HTTP emulators of the SaaS providers the operator validates against.
