//! TEMPORARY STUB (replaced by the inject branch).
use crate::proxy::body::ProxyBody;
pub fn prefer_identity(_m: &http::Method, _h: &mut http::HeaderMap) {}
pub enum Skip {
    NotHtml,
}
impl Skip {
    pub fn is_page(&self) -> bool {
        false
    }
}
pub struct Plan;
pub struct Tag {
    pub src: String,
    pub data: Vec<(&'static str, String)>,
}
pub fn plan(_m: &http::Method, _p: &http::response::Parts) -> Result<Plan, Skip> {
    Err(Skip::NotHtml)
}
pub fn inject(
    _plan: Plan,
    _p: &mut http::response::Parts,
    body: ProxyBody,
    _t: &Tag,
    _done: impl FnOnce(bool) + Send + 'static,
) -> ProxyBody {
    body
}
