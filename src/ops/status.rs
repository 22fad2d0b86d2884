//! The status view (`dropsync status`, `GET /api/admin/status`): the catalog's counts, with the
//! configured FTP sources and each tenant's minutes this month.

use crate::catalog::{Catalog, CatalogError, FtpSourceStatus, StatusView};
use crate::config::Config;

/// The status of every tenant, or of `tenant` only.
pub fn view(config: &Config, catalog: &Catalog, tenant: Option<&str>) -> Result<StatusView, CatalogError> {
    let mut view = catalog.reports().status(tenant)?;
    // Sources in the configuration, as polled so far; one never polled yet shows as such.
    let mut sources = Vec::new();
    for t in config
        .tenants
        .iter()
        .filter(|t| tenant.is_none_or(|id| t.id.as_str() == id))
    {
        for src in &t.ftp {
            let url = src.url.to_string();
            let found = view
                .ftp_sources
                .iter()
                .find(|s| s.tenant == t.id.as_str() && s.url == url)
                .cloned();
            sources.push(found.unwrap_or_else(|| FtpSourceStatus::never_polled(t.id.as_str(), &url)));
        }
    }
    view.ftp_sources = sources;
    let mut allocations = crate::catalog::allocations_for(&config.tenants, crate::catalog::now_ms());
    allocations.retain(|t, _| tenant.is_none_or(|id| t == id));
    view.minutes = catalog.minutes().status(&allocations)?;
    view.nodes = catalog.leases().nodes()?;
    Ok(view)
}
