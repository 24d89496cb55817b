//! The operations an OpenAPI document lists. One definition for the two checks that keep the
//! document true: the router's unit test (route table = document) and the integration tests
//! (`tests/it/apidocs.rs` includes this file), which list the routes that need a token.

use std::collections::BTreeSet;

use serde_json::Value;

/// `(METHOD, path template, public)` of every operation of an OpenAPI document; an operation
/// is public where it (or, when it says nothing, the document) has `security: []`.
pub fn operations(doc: &Value) -> BTreeSet<(String, String, bool)> {
    let public_by_default = doc["security"].as_array().is_some_and(Vec::is_empty);
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if !["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let public = match op.get("security") {
                Some(s) => s.as_array().is_some_and(Vec::is_empty),
                None => public_by_default,
            };
            out.insert((method.to_uppercase(), path.clone(), public));
        }
    }
    out
}
