//! Billing data from the entitlement store: what `billing.toml` says, for one owner, from the
//! rows the admin API wrote (activations, prepaid packs not refunded, contract prices).

use rust_decimal::Decimal;

use crate::OwnerBilling;
use crate::PurchasedPack;
use tollgate_core::catalog::Catalog;
use tollgate_core::clock::beijing;
use tollgate_store::Image;
use tollgate_store::tokio_postgres;

/// The owner's billing data in `image` (an image of at least the owner's tree). Rows naming
/// what the catalog does not know are an error: a statement must not silently drop them.
pub fn owner_billing(image: &Image, owner: u64, catalog: &Catalog) -> anyhow::Result<OwnerBilling> {
    let mut b = OwnerBilling {
        uin: owner,
        postpaid_off: image.accounts.get(&owner).is_some_and(|a| !a.postpaid),
        ..Default::default()
    };
    for a in image.activations.values().filter(|a| a.owner_uin == owner) {
        let svc = catalog.service_by_name(&a.service).ok_or_else(|| {
            anyhow::anyhow!(
                "store: account {owner} activated unknown service {:?}",
                a.service
            )
        })?;
        b.activations
            .insert(svc.id, a.activated_at.with_timezone(&beijing()));
    }
    for p in image
        .packs
        .values()
        .filter(|p| p.owner_uin == owner && p.refunded_at.is_none())
    {
        let item = catalog.item_by_key(&p.item).ok_or_else(|| {
            anyhow::anyhow!(
                "store: pack {} is of unknown billing item {:?}",
                p.id,
                p.item
            )
        })?;
        b.packs.push(PurchasedPack {
            id: p.id.clone(),
            item: item.id,
            size: p.size,
            purchased_at: p.purchased_at.with_timezone(&beijing()),
            price_paid: p.price,
        });
    }
    b.packs
        .sort_by(|x, y| (x.purchased_at, &x.id).cmp(&(y.purchased_at, &y.id)));
    b.libraries = image
        .libraries
        .values()
        .filter(|l| l.owner_uin == owner)
        .map(|l| (l.group_id.clone(), l.group_type))
        .collect();
    for c in image
        .contract_prices
        .values()
        .filter(|c| c.owner_uin == owner)
    {
        let item = catalog.item_by_key(&c.item).ok_or_else(|| {
            anyhow::anyhow!("store: contract price of unknown billing item {:?}", c.item)
        })?;
        let price: Decimal = c.price;
        b.contract_prices.insert(item.id, price);
    }
    Ok(b)
}

/// The owner's billing data in `image`, with its suspensions as `c` sees them: what rating
/// takes for a statement, a live rating, a settlement or a refund.
pub async fn billing_in(
    c: &impl tokio_postgres::GenericClient,
    image: &Image,
    owner: u64,
    catalog: &Catalog,
) -> anyhow::Result<OwnerBilling> {
    let mut b = owner_billing(image, owner, catalog)?;
    b.suspensions = crate::arrears::suspensions(c, owner).await?;
    Ok(b)
}

/// Reads the owner's tree from the store at `url` and returns its billing data.
pub async fn load_owner_billing(
    url: &str,
    owner: u64,
    catalog: &Catalog,
) -> anyhow::Result<OwnerBilling> {
    let mut client = tollgate_store::connect(url, std::time::Duration::from_secs(10)).await?;
    let image = tollgate_store::read(&mut client, tollgate_store::Scope::owner(owner)).await?;
    billing_in(&client, &image, owner, catalog).await
}

/// An owner's library types from a gateway's libraries file (`image_search.libraries_file`,
/// kept with file entitlements): `{"libraries": [row, …]}`, deleted libraries included.
pub fn libraries_file(
    path: &std::path::Path,
    owner: u64,
) -> anyhow::Result<rustc_hash::FxHashMap<String, i64>> {
    #[derive(serde::Deserialize)]
    struct File {
        libraries: Vec<tollgate_store::image::LibraryRow>,
    }
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let f: File =
        serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(f.libraries
        .into_iter()
        .filter(|l| l.owner_uin == owner)
        .map(|l| (l.group_id, l.group_type))
        .collect())
}
