//! A user's accounts: `fxctl deposit`, `balance`, `freeze` and `unfreeze` (admin requests to
//! the user's partition of fx-krw and fx-usd).

use clap::Args;

use super::{money, print_json, Globals};
use crate::CtlResult;

#[derive(Args, Debug)]
pub struct DepositArgs {
    #[arg(long)]
    user: String,
    /// KRW, whole won.
    #[arg(long)]
    krw: Option<String>,
    /// USD, up to cents.
    #[arg(long)]
    usd: Option<String>,
}

/// The user an account command acts on.
#[derive(Args, Debug)]
pub struct UserArgs {
    #[arg(long)]
    user: String,
}

/// Deposits KRW and/or USD.
pub async fn deposit(g: &Globals, a: DepositArgs) -> CtlResult<()> {
    let krw = a.krw.map(|k| money(&k, events::Krw::parse)).transpose()?;
    let usd = a.usd.map(|u| money(&u, events::Usd::parse)).transpose()?;
    let user = crate::user(&a.user)?;
    let client = g.connect().await?;
    let out = crate::deposit(&client, &user, krw, usd, &g.actor).await?;
    if g.json {
        print_json(&out)
    } else {
        println!("deposited for {}", a.user);
    }
    Ok(())
}

/// Prints the user's KRW (available, held) and USD balances.
pub async fn balance(g: &Globals, a: UserArgs) -> CtlResult<()> {
    let user = crate::user(&a.user)?;
    let client = g.connect().await?;
    let b = crate::balance(&client, &user, &g.actor).await?;
    if g.json {
        print_json(&b);
    } else {
        println!(
            "{:<16} {:>20} {:>20} {:>18}  frozen",
            "user", "KRW available", "KRW held", "USD"
        );
        println!(
            "{:<16} {:>20} {:>20} {:>18}  {}",
            b.user_id, b.krw_available, b.krw_held, b.usd, b.usd_frozen
        );
    }
    Ok(())
}

/// Freezes (`frozen`) or unfreezes the user's USD account.
pub async fn set_frozen(g: &Globals, a: UserArgs, frozen: bool) -> CtlResult<()> {
    let user = crate::user(&a.user)?;
    let client = g.connect().await?;
    let out = crate::set_frozen(&client, &user, frozen, &g.actor).await?;
    if g.json {
        print_json(&out)
    } else if frozen {
        println!("{}: USD account frozen", a.user);
    } else {
        println!("{}: USD account unfrozen", a.user);
    }
    Ok(())
}
