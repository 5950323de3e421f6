//! Typed requests and responses for the KCR actions kcr-housekeeper uses:
//! the instance, token, namespace and repository/image groups of the reference.
//!
//! Requests know how to write their parameters; responses decode tolerantly
//! (see [`super::decode`]).

use super::decode::{self, KcrTime};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The API version every request carries.
pub const API_VERSION: &str = "2021-11-09";
/// The largest page the API serves.
pub const MAX_PAGE: u32 = 99;

/// Request parameters in the order they were added (the signer sorts them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.push((key.to_owned(), value.into()));
        self
    }
    pub fn set_opt(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }
    /// Booleans are `True`/`False` on the wire.
    pub fn set_bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.set(key, if value { "True" } else { "False" })
    }
    /// Lists are `Key.1`, `Key.2`, … (N from 1).
    pub fn set_list<S: AsRef<str>>(&mut self, key: &str, values: &[S]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            self.set(&format!("{key}.{}", i + 1), v.as_ref());
        }
        self
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Reads and mutations whose repetition is harmless.
    Idempotent,
    /// Creations: repeat only when the request was surely not applied
    /// (a blind retry of CreateInstanceToken would leak a token).
    OnlyIfNotApplied,
}

/// One KCR action.
pub trait Action: Send + Sync {
    const NAME: &'static str;
    const RETRY: RetryClass = RetryClass::Idempotent;
    /// Reads go as GET; everything else as a signed form POST.
    const READ_ONLY: bool = false;
    type Output: DeserializeOwned + Send + 'static;
    fn write_params(&self, p: &mut Params);
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
    /// The next offset, or 0 at the end, as the API reports it.
    pub next_marker: u64,
    /// The page size the API says it used (`MaxResults` in the answer; 0
    /// when absent). An endpoint may clamp the size asked for: a page of
    /// this many items is full even when smaller than the size asked.
    pub page_size: u64,
}

/// A listing action with `Marker`/`MaxResults` offset pagination.
pub trait Paginated: Action + Clone {
    type Item: Send + 'static;
    fn set_page(&mut self, marker: u64, max_results: u32);
    fn into_page(out: Self::Output) -> Page<Self::Item>;
}

/// A listing action whose request has `marker`/`max_results` and whose
/// output has the item list, `total_count` and `marker`.
macro_rules! paginated {
    ($request:ty, $item:ty) => {
        impl Paginated for $request {
            type Item = $item;
            fn set_page(&mut self, marker: u64, max_results: u32) {
                self.marker = Some(marker);
                self.max_results = Some(max_results);
            }
            fn into_page(out: Self::Output) -> Page<$item> {
                Page {
                    items: out.items,
                    total: out.total_count,
                    next_marker: out.marker,
                    page_size: out.max_results,
                }
            }
        }
    };
}

fn write_page(p: &mut Params, marker: Option<u64>, max: Option<u32>) {
    if let Some(m) = marker {
        p.set("Marker", m.to_string());
    }
    if let Some(m) = max {
        p.set("MaxResults", m.to_string());
    }
}

/// The answer of every listing action. The list's name differs per action
/// (`InstanceSet`, `TokenSet`, …); one generic shape accepts them all.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct ListOutput<T> {
    #[serde(
        alias = "InstanceSet",
        alias = "TokenSet",
        alias = "NamespaceSet",
        alias = "RepoSet",
        alias = "ImageSet",
        default = "Vec::new",
        deserialize_with = "decode::null_default"
    )]
    pub items: Vec<T>,
    #[serde(rename = "TotalCount", default, deserialize_with = "decode::count")]
    pub total_count: u64,
    #[serde(rename = "Marker", default, deserialize_with = "decode::count")]
    pub marker: u64,
    /// The page size the API used, as it echoes it (0 when absent).
    #[serde(rename = "MaxResults", default, deserialize_with = "decode::count")]
    pub max_results: u64,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

/// The response of actions that only acknowledge.
#[derive(Clone, Debug, Deserialize)]
pub struct Ack {
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

// ---------------------------------------------------------------- instances

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Instance {
    #[serde(rename = "InstanceId", deserialize_with = "decode::id")]
    pub instance_id: String,
    #[serde(
        rename = "InstanceName",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub instance_name: String,
    #[serde(
        rename = "InstanceType",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub instance_type: String,
    #[serde(
        rename = "InstanceStatus",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub instance_status: String,
    #[serde(rename = "InternalEndpoint", default)]
    pub internal_endpoint: Option<String>,
    #[serde(rename = "CreateTime", default, deserialize_with = "decode::opt_time")]
    pub create_time: Option<KcrTime>,
    #[serde(rename = "ExpiredTime", default, deserialize_with = "decode::opt_time")]
    pub expired_time: Option<KcrTime>,
    #[serde(rename = "ChargeType", default)]
    pub charge_type: Option<String>,
    #[serde(rename = "ProjectId", default, deserialize_with = "decode::opt_id")]
    pub project_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateInstance {
    pub instance_name: String,
    pub instance_type: String,
    pub charge_type: Option<String>,
    pub purchase_time: Option<u32>,
    pub project_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CreateInstanceOutput {
    #[serde(
        rename = "InstanceId",
        alias = "instanceId",
        deserialize_with = "decode::id"
    )]
    pub instance_id: String,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

impl Action for CreateInstance {
    const NAME: &'static str = "CreateInstance";
    const RETRY: RetryClass = RetryClass::OnlyIfNotApplied;
    type Output = CreateInstanceOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceName", &self.instance_name)
            .set("InstanceType", &self.instance_type)
            .set_opt("ChargeType", self.charge_type.as_deref())
            .set_opt("ProjectId", self.project_id.as_deref());
        if let Some(t) = self.purchase_time {
            p.set("PurchaseTime", t.to_string());
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DescribeInstance {
    pub instance_ids: Vec<String>,
    pub project_ids: Vec<String>,
    pub instance_name: Option<String>,
    pub marker: Option<u64>,
    pub max_results: Option<u32>,
}

pub type DescribeInstanceOutput = ListOutput<Instance>;

impl Action for DescribeInstance {
    const NAME: &'static str = "DescribeInstance";
    const READ_ONLY: bool = true;
    type Output = DescribeInstanceOutput;
    fn write_params(&self, p: &mut Params) {
        p.set_list("InstanceId", &self.instance_ids)
            .set_list("ProjectId", &self.project_ids)
            .set_opt("InstanceName", self.instance_name.as_deref());
        write_page(p, self.marker, self.max_results);
    }
}

paginated!(DescribeInstance, Instance);

#[derive(Clone, Debug)]
pub struct DescribeInstanceUsage {
    pub instance_id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct InstanceUsage {
    #[serde(rename = "NamespaceQuota", default, deserialize_with = "decode::count")]
    pub namespace_quota: u64,
    #[serde(rename = "NamespaceUsage", default, deserialize_with = "decode::count")]
    pub namespace_usage: u64,
    #[serde(rename = "RepoQuota", default, deserialize_with = "decode::count")]
    pub repo_quota: u64,
    #[serde(rename = "RepoUsage", default, deserialize_with = "decode::count")]
    pub repo_usage: u64,
    #[serde(rename = "RequestId", alias = "requestId", default, skip_serializing)]
    pub request_id: String,
}

impl Action for DescribeInstanceUsage {
    const NAME: &'static str = "DescribeInstanceUsage";
    const READ_ONLY: bool = true;
    type Output = InstanceUsage;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id);
    }
}

#[derive(Clone, Debug)]
pub struct DeleteInstance {
    pub instance_id: String,
    pub delete_bucket: Option<bool>,
}

impl Action for DeleteInstance {
    const NAME: &'static str = "DeleteInstance";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id);
        if let Some(b) = self.delete_bucket {
            p.set_bool("DeleteBucket", b);
        }
    }
}

// ---------------------------------------------------------------- tokens

/// How long a new token lives, as the API expresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLifetime {
    Hours(u32),
    Days(u32),
    NeverExpire,
}

impl TokenLifetime {
    fn write(&self, p: &mut Params) {
        match self {
            TokenLifetime::Hours(h) => p.set("TokenType", "Hour").set("TokenTime", h.to_string()),
            TokenLifetime::Days(d) => p.set("TokenType", "Day").set("TokenTime", d.to_string()),
            // TokenTime is required even though it has no effect here.
            TokenLifetime::NeverExpire => p.set("TokenType", "NeverExpire").set("TokenTime", "0"),
        };
    }
}

#[derive(Clone, Debug)]
pub struct CreateInstanceToken {
    pub instance_id: String,
    pub lifetime: TokenLifetime,
    pub desc: Option<String>,
}

/// The only response that carries a token's secret. `Debug` redacts it.
#[derive(Debug, Deserialize)]
pub struct CreatedToken {
    #[serde(rename = "TokenId", alias = "tokenId", deserialize_with = "decode::id")]
    pub token_id: String,
    #[serde(
        rename = "Username",
        alias = "username",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub username: String,
    #[serde(rename = "Token", alias = "token")]
    pub token: SecretString,
    #[serde(
        rename = "ExpireTime",
        alias = "expireTime",
        default,
        deserialize_with = "decode::opt_time"
    )]
    pub expire_time: Option<KcrTime>,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

impl Action for CreateInstanceToken {
    const NAME: &'static str = "CreateInstanceToken";
    const RETRY: RetryClass = RetryClass::OnlyIfNotApplied;
    type Output = CreatedToken;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id);
        self.lifetime.write(p);
        p.set_opt("Desc", self.desc.as_deref());
    }
}

#[derive(Clone, Debug)]
pub struct ModifyInstanceTokenStatus {
    pub instance_id: String,
    pub token_id: String,
    pub enable: bool,
}

impl Action for ModifyInstanceTokenStatus {
    const NAME: &'static str = "ModifyInstanceTokenStatus";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("TokenId", &self.token_id)
            .set_bool("Enable", self.enable);
    }
}

#[derive(Clone, Debug)]
pub struct ModifyInstanceTokenInformation {
    pub instance_id: String,
    pub token_id: String,
    pub lifetime: Option<TokenLifetime>,
    pub desc: Option<String>,
}

impl Action for ModifyInstanceTokenInformation {
    const NAME: &'static str = "ModifyInstanceTokenInformation";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("TokenId", &self.token_id);
        if let Some(l) = &self.lifetime {
            l.write(p);
        }
        p.set_opt("Desc", self.desc.as_deref());
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TokenInfo {
    #[serde(rename = "TokenId", alias = "tokenId", deserialize_with = "decode::id")]
    pub token_id: String,
    #[serde(rename = "Enable", default, deserialize_with = "decode::flag")]
    pub enable: bool,
    #[serde(rename = "Desc", default)]
    pub desc: Option<String>,
    #[serde(rename = "CreateTime", default, deserialize_with = "decode::opt_time")]
    pub create_time: Option<KcrTime>,
    /// `None`: the token never expires.
    #[serde(rename = "ExpireTime", default, deserialize_with = "decode::opt_time")]
    pub expire_time: Option<KcrTime>,
}

#[derive(Clone, Debug)]
pub struct DescribeInstanceToken {
    pub instance_id: String,
    pub marker: Option<u64>,
    pub max_results: Option<u32>,
}

pub type DescribeInstanceTokenOutput = ListOutput<TokenInfo>;

impl Action for DescribeInstanceToken {
    const NAME: &'static str = "DescribeInstanceToken";
    const READ_ONLY: bool = true;
    type Output = DescribeInstanceTokenOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id);
        write_page(p, self.marker, self.max_results);
    }
}

paginated!(DescribeInstanceToken, TokenInfo);

#[derive(Clone, Debug)]
pub struct DeleteInstanceToken {
    pub instance_id: String,
    pub token_id: String,
}

impl Action for DeleteInstanceToken {
    const NAME: &'static str = "DeleteInstanceToken";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("TokenId", &self.token_id);
    }
}

// ---------------------------------------------------------------- namespaces

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Namespace {
    #[serde(rename = "Namespace")]
    pub namespace: String,
    #[serde(rename = "Public", default, deserialize_with = "decode::flag")]
    pub public: bool,
    #[serde(rename = "RepoCount", default, deserialize_with = "decode::count")]
    pub repo_count: u64,
    #[serde(rename = "CreateTime", default, deserialize_with = "decode::opt_time")]
    pub create_time: Option<KcrTime>,
}

#[derive(Clone, Debug)]
pub struct CreateNamespace {
    pub instance_id: String,
    pub namespace: String,
    pub public: bool,
}

impl Action for CreateNamespace {
    const NAME: &'static str = "CreateNamespace";
    const RETRY: RetryClass = RetryClass::OnlyIfNotApplied;
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set_bool("Public", self.public);
    }
}

#[derive(Clone, Debug)]
pub struct DescribeNamespace {
    pub instance_id: String,
    pub namespace: Option<String>,
    pub public: Option<bool>,
    pub marker: Option<u64>,
    pub max_results: Option<u32>,
}

impl DescribeNamespace {
    pub fn all(instance_id: &str) -> Self {
        DescribeNamespace {
            instance_id: instance_id.to_owned(),
            namespace: None,
            public: None,
            marker: None,
            max_results: None,
        }
    }
}

pub type DescribeNamespaceOutput = ListOutput<Namespace>;

impl Action for DescribeNamespace {
    const NAME: &'static str = "DescribeNamespace";
    const READ_ONLY: bool = true;
    type Output = DescribeNamespaceOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set_opt("Namespace", self.namespace.as_deref());
        if let Some(b) = self.public {
            p.set_bool("Public", b);
        }
        write_page(p, self.marker, self.max_results);
    }
}

paginated!(DescribeNamespace, Namespace);

#[derive(Clone, Debug)]
pub struct ModifyNamespaceType {
    pub instance_id: String,
    pub namespace: String,
    pub public: bool,
}

impl Action for ModifyNamespaceType {
    const NAME: &'static str = "ModifyNamespaceType";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set_bool("Public", self.public);
    }
}

#[derive(Clone, Debug)]
pub struct DescribeNamespaceExist {
    pub instance_id: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NamespaceExist {
    #[serde(rename = "Exist", default, deserialize_with = "decode::flag")]
    pub exist: bool,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

impl Action for DescribeNamespaceExist {
    const NAME: &'static str = "DescribeNamespaceExist";
    const READ_ONLY: bool = true;
    type Output = NamespaceExist;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace);
    }
}

#[derive(Clone, Debug)]
pub struct DeleteNamespace {
    pub instance_id: String,
    pub namespace: String,
}

impl Action for DeleteNamespace {
    const NAME: &'static str = "DeleteNamespace";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace);
    }
}

// ---------------------------------------------------------------- repositories

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Repo {
    #[serde(rename = "RepoName")]
    pub repo_name: String,
    #[serde(rename = "Public", default, deserialize_with = "decode::opt_flag")]
    pub public: Option<bool>,
    #[serde(rename = "CreateTime", default, deserialize_with = "decode::opt_time")]
    pub create_time: Option<KcrTime>,
    #[serde(rename = "UpdateTime", default, deserialize_with = "decode::opt_time")]
    pub update_time: Option<KcrTime>,
    #[serde(rename = "Desc", default)]
    pub desc: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DescribeRepository {
    pub instance_id: String,
    pub namespace: String,
    pub repo_name: Option<String>,
    pub marker: Option<u64>,
    pub max_results: Option<u32>,
}

impl DescribeRepository {
    pub fn all(instance_id: &str, namespace: &str) -> Self {
        DescribeRepository {
            instance_id: instance_id.to_owned(),
            namespace: namespace.to_owned(),
            repo_name: None,
            marker: None,
            max_results: None,
        }
    }
}

pub type DescribeRepositoryOutput = ListOutput<Repo>;

impl Action for DescribeRepository {
    const NAME: &'static str = "DescribeRepository";
    const READ_ONLY: bool = true;
    type Output = DescribeRepositoryOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            // An Array of String in the reference: `RepoName.1`.
            .set_list("RepoName", self.repo_name.as_slice());
        write_page(p, self.marker, self.max_results);
    }
}

paginated!(DescribeRepository, Repo);

#[derive(Clone, Debug)]
pub struct DeleteRepository {
    pub instance_id: String,
    pub namespace: String,
    pub repo_name: String,
}

impl Action for DeleteRepository {
    const NAME: &'static str = "DeleteRepository";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set("RepoName", &self.repo_name);
    }
}

#[derive(Clone, Debug)]
pub struct ModifyRepoDesc {
    pub instance_id: String,
    pub namespace: String,
    pub repo_name: String,
    pub desc: String,
}

impl Action for ModifyRepoDesc {
    const NAME: &'static str = "ModifyRepoDesc";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set("RepoName", &self.repo_name)
            .set("Desc", &self.desc);
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Image {
    /// The digest, `sha256:…`.
    #[serde(rename = "ImageId", deserialize_with = "decode::id")]
    pub image_id: String,
    #[serde(rename = "Size", default, deserialize_with = "decode::count")]
    pub size: u64,
    #[serde(rename = "CreateTime", default, deserialize_with = "decode::opt_time")]
    pub create_time: Option<KcrTime>,
    #[serde(
        rename = "TagNames",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub tag_names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct DescribeImages {
    pub instance_id: String,
    pub namespace: String,
    pub repo_name: String,
    pub image_id: Option<String>,
    pub marker: Option<u64>,
    pub max_results: Option<u32>,
}

impl DescribeImages {
    pub fn all(instance_id: &str, namespace: &str, repo_name: &str) -> Self {
        DescribeImages {
            instance_id: instance_id.to_owned(),
            namespace: namespace.to_owned(),
            repo_name: repo_name.to_owned(),
            image_id: None,
            marker: None,
            max_results: None,
        }
    }
}

pub type DescribeImagesOutput = ListOutput<Image>;

impl Action for DescribeImages {
    const NAME: &'static str = "DescribeImages";
    const READ_ONLY: bool = true;
    type Output = DescribeImagesOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set("RepoName", &self.repo_name)
            .set_opt("ImageId", self.image_id.as_deref());
        write_page(p, self.marker, self.max_results);
    }
}

paginated!(DescribeImages, Image);

/// Actions addressed to one image: InstanceId, Namespace, RepoName, ImageId.
macro_rules! image_action {
    ($(#[$doc:meta])* $name:ident => $output:ty, read_only: $read_only:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            pub instance_id: String,
            pub namespace: String,
            pub repo_name: String,
            pub image_id: String,
        }

        impl Action for $name {
            const NAME: &'static str = stringify!($name);
            const READ_ONLY: bool = $read_only;
            type Output = $output;
            fn write_params(&self, p: &mut Params) {
                p.set("InstanceId", &self.instance_id)
                    .set("Namespace", &self.namespace)
                    .set("RepoName", &self.repo_name)
                    .set("ImageId", &self.image_id);
            }
        }
    };
}

image_action!(
    /// Removes the image and every tag on it.
    DeleteImages => Ack, read_only: false
);

#[derive(Clone, Debug)]
pub struct DeleteRepoTag {
    pub instance_id: String,
    pub namespace: String,
    pub repo_name: String,
    pub tag_name: String,
}

impl Action for DeleteRepoTag {
    const NAME: &'static str = "DeleteRepoTag";
    type Output = Ack;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace)
            .set("RepoName", &self.repo_name)
            .set("TagName", &self.tag_name);
    }
}

image_action!(StartImageScan => Ack, read_only: false);

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ScanSummary {
    #[serde(rename = "High", default, deserialize_with = "decode::count")]
    pub high: u64,
    #[serde(rename = "Medium", default, deserialize_with = "decode::count")]
    pub medium: u64,
    #[serde(rename = "Low", default, deserialize_with = "decode::count")]
    pub low: u64,
    #[serde(rename = "Negligible", default, deserialize_with = "decode::count")]
    pub negligible: u64,
    #[serde(rename = "Unknown", default, deserialize_with = "decode::count")]
    pub unknown: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Vulnerability {
    #[serde(rename = "CveName", default)]
    pub cve_name: Option<String>,
    #[serde(rename = "CveLink", default)]
    pub cve_link: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "Severity", default)]
    pub severity: Option<String>,
    #[serde(rename = "Feature", default)]
    pub feature: Option<String>,
    #[serde(rename = "CurrentVersion", default)]
    pub current_version: Option<String>,
    #[serde(rename = "RepairedVersion", default)]
    pub repaired_version: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ImageScan {
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "TotalCount", default, deserialize_with = "decode::count")]
    pub total_count: u64,
    #[serde(rename = "FinishTime", default, deserialize_with = "decode::opt_time")]
    pub finish_time: Option<KcrTime>,
    #[serde(rename = "Summary", default, deserialize_with = "decode::null_default")]
    pub summary: ScanSummary,
    #[serde(
        rename = "VulnerabilitySet",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub vulnerabilities: Vec<Vulnerability>,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

image_action!(DescribeImageScan => ImageScan, read_only: true);

// ------------------------------------------------- access and server-side retention
//
// Not in the reference (2021-11-09); names and shapes as the Kingsoft SDKs
// carry them. A real endpoint that does not know them answers with an
// "unknown action" error, which [`crate::Client::call_if_supported`]
// turns into [`Supported::No`].

/// An action's answer, or the endpoint's word that it does not offer the action.
#[derive(Clone, Debug, PartialEq)]
pub enum Supported<T> {
    Yes(T),
    /// The endpoint does not know the action; `code` is its error code.
    No {
        code: String,
    },
}

impl<T> Supported<T> {
    pub fn ok(self) -> Option<T> {
        match self {
            Supported::Yes(t) => Some(t),
            Supported::No { .. } => None,
        }
    }
}

/// `DescribeExternalEndpoint`: the instance's public access policy.
#[derive(Clone, Debug)]
pub struct DescribeExternalEndpoint {
    pub instance_id: String,
}

/// One allowed address range of the external endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EndpointPolicy {
    #[serde(rename = "Entry", default, deserialize_with = "decode::null_default")]
    pub entry: String,
    #[serde(rename = "Desc", default, deserialize_with = "decode::null_default")]
    pub desc: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExternalEndpoint {
    /// `Opened` or `Closed` (anything else is passed on as the API wrote it).
    #[serde(rename = "Status", default, deserialize_with = "decode::null_default")]
    pub status: String,
    #[serde(
        rename = "PolicySet",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub policies: Vec<EndpointPolicy>,
    #[serde(rename = "RequestId", alias = "requestId", default, skip_serializing)]
    pub request_id: String,
}

impl ExternalEndpoint {
    pub fn is_open(&self) -> bool {
        self.status.eq_ignore_ascii_case("Opened")
    }
}

impl Action for DescribeExternalEndpoint {
    const NAME: &'static str = "DescribeExternalEndpoint";
    const READ_ONLY: bool = true;
    type Output = ExternalEndpoint;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id);
    }
}

/// `DescribeRetentionRule`: a namespace's server-side (Harbor) retention rules.
#[derive(Clone, Debug)]
pub struct DescribeRetentionRule {
    pub instance_id: String,
    pub namespace: String,
}

/// One server-side retention rule (the SDK's field names, `TagPatten` included).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ServerRetentionRule {
    #[serde(rename = "Id", default, deserialize_with = "decode::opt_id")]
    pub id: Option<String>,
    #[serde(rename = "Disabled", default, deserialize_with = "decode::flag")]
    pub disabled: bool,
    #[serde(rename = "RegistryScope", default)]
    pub registry_scope: Option<String>,
    #[serde(rename = "Type", default)]
    pub rule_type: Option<String>,
    #[serde(rename = "UnTagged", default, deserialize_with = "decode::flag")]
    pub untagged: bool,
    #[serde(rename = "Template", default)]
    pub template: Option<String>,
    #[serde(rename = "TagPatten", default)]
    pub tag_patten: Option<String>,
    #[serde(rename = "Param", default, deserialize_with = "decode::opt_id")]
    pub param: Option<String>,
}

/// The rules of one namespace. `Data` may be one rule (the Go SDK's shape),
/// a list of rules, or `null` (none). `Data` must be there: an answer of
/// another shape is a decode error (the caller blocks the namespace), never
/// read as "no rules" — that would lift the block it exists for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionRules {
    pub rules: Vec<ServerRetentionRule>,
    pub request_id: String,
}

impl RetentionRules {
    /// Rules that are not disabled.
    pub fn enabled(&self) -> impl Iterator<Item = &ServerRetentionRule> {
        self.rules.iter().filter(|r| !r.disabled)
    }
}

impl<'de> Deserialize<'de> for RetentionRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        /// `Some(Null)` for `"Data": null`, `None` when the key is absent.
        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<serde_json::Value>, D::Error> {
            serde_json::Value::deserialize(d).map(Some)
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "Data", default, deserialize_with = "present")]
            data: Option<serde_json::Value>,
            #[serde(rename = "RequestId", alias = "requestId", default)]
            request_id: String,
        }
        let raw = Raw::deserialize(d)?;
        let Some(data) = raw.data else {
            return Err(D::Error::custom(
                "no Data: not an answer of DescribeRetentionRule's shape",
            ));
        };
        let rules = match data {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(items) => items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(D::Error::custom)?,
            serde_json::Value::Object(map) if map.is_empty() => Vec::new(),
            one @ serde_json::Value::Object(_) => {
                vec![serde_json::from_value(one).map_err(D::Error::custom)?]
            }
            _ => return Err(D::Error::custom("Data: expected a rule, a list or null")),
        };
        Ok(RetentionRules {
            rules,
            request_id: raw.request_id,
        })
    }
}

impl Action for DescribeRetentionRule {
    const NAME: &'static str = "DescribeRetentionRule";
    const READ_ONLY: bool = true;
    type Output = RetentionRules;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace);
    }
}

/// `GetRetentionTrigger`: when a namespace's server-side retention runs.
#[derive(Clone, Debug)]
pub struct GetRetentionTrigger {
    pub instance_id: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ServerRetentionTrigger {
    #[serde(rename = "DisplayText", default)]
    pub display_text: Option<String>,
    #[serde(rename = "Cron", default)]
    pub cron: Option<String>,
    #[serde(
        rename = "Optional",
        default,
        deserialize_with = "decode::null_default"
    )]
    pub optional: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RetentionTriggerOutput {
    #[serde(rename = "Data", default)]
    pub trigger: Option<ServerRetentionTrigger>,
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: String,
}

impl Action for GetRetentionTrigger {
    const NAME: &'static str = "GetRetentionTrigger";
    const READ_ONLY: bool = true;
    type Output = RetentionTriggerOutput;
    fn write_params(&self, p: &mut Params) {
        p.set("InstanceId", &self.instance_id)
            .set("Namespace", &self.namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn retention_rules_decode_as_one_rule_a_list_or_nothing() {
        let one = r#"{"RequestId":"r","Data":{"Id":7,"Disabled":false,"RegistryScope":"**",
            "Type":"byNum","UnTagged":true,"Template":"latestPushedK","TagPatten":null,"Param":10}}"#;
        let r: RetentionRules = serde_json::from_str(one).unwrap();
        assert_eq!(r.rules.len(), 1);
        assert_eq!(r.rules[0].id.as_deref(), Some("7"));
        assert_eq!(r.rules[0].param.as_deref(), Some("10"));
        assert_eq!(r.enabled().count(), 1);
        let list =
            r#"{"Data":[{"Id":"1","Disabled":true},{"Id":2,"TagPatten":"v*","NewField":1}]}"#;
        let r: RetentionRules = serde_json::from_str(list).unwrap();
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.enabled().count(), 1);
        for none in [r#"{"Data":null}"#, r#"{"Data":{}}"#, r#"{"Data":[]}"#] {
            let r: RetentionRules = serde_json::from_str(none).unwrap();
            assert!(r.rules.is_empty(), "{none}");
        }
        assert!(serde_json::from_str::<RetentionRules>(r#"{"Data":"x"}"#).is_err());
    }

    /// Review 2 #8: DescribeRepository's RepoName is an Array of String in
    /// the reference, sent as `RepoName.1` (a bare `RepoName` is not it).
    #[test]
    fn describe_repository_sends_repo_name_as_a_list() {
        let mut p = Params::default();
        DescribeRepository {
            repo_name: Some("web".into()),
            ..DescribeRepository::all("i", "apps")
        }
        .write_params(&mut p);
        assert_eq!(p.get("RepoName.1"), Some("web"));
        assert_eq!(p.get("RepoName"), None);
        let mut p = Params::default();
        DescribeRepository::all("i", "apps").write_params(&mut p);
        assert!(p.0.iter().all(|(k, _)| !k.starts_with("RepoName")), "{p:?}");
    }

    /// Review 2 #3: an answer without `Data` (another shape) is not "no
    /// rules" — it fails, so the namespace is unreadable and stays blocked.
    #[test]
    fn retention_rules_without_data_fail_to_decode() {
        for other in [
            r#"{}"#,
            r#"{"RequestId":"r"}"#,
            r#"{"RequestId":"r","RetentionRuleSet":[{"Id":1}]}"#,
            r#"{"data":[{"Id":1}]}"#,
        ] {
            let e = serde_json::from_str::<RetentionRules>(other).unwrap_err();
            assert!(e.to_string().contains("no Data"), "{other}: {e}");
        }
    }

    #[test]
    fn external_endpoint_decodes_with_nulls() {
        let e: ExternalEndpoint = serde_json::from_str(
            r#"{"Status":"Opened","PolicySet":[{"Entry":"10.0.0.0/8","Desc":null}],"RequestId":"r"}"#,
        )
        .unwrap();
        assert!(e.is_open());
        assert_eq!(e.policies[0].entry, "10.0.0.0/8");
        let e: ExternalEndpoint =
            serde_json::from_str(r#"{"Status":"Closed","PolicySet":null}"#).unwrap();
        assert!(!e.is_open() && e.policies.is_empty());
    }

    #[test]
    fn create_token_response_with_lower_camel_id_decodes_and_redacts() {
        // The reference's example: `tokenId` in lower camel case.
        let body = r#"{"Username":"u1","tokenId":"7da2318d-2f12","Token":"s3cr3t-value",
                       "ExpireTime":"2022-07-26 11:21:49","RequestId":"dd3f"}"#;
        let t: CreatedToken = serde_json::from_str(body).unwrap();
        assert_eq!(t.token_id, "7da2318d-2f12");
        assert_eq!(t.token.expose_secret(), "s3cr3t-value");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn namespace_repo_count_as_string() {
        let body = r#"{"RequestId":"x","MaxResults":20,"Marker":0,"TotalCount":"1",
            "NamespaceSet":[{"Namespace":"a","Public":true,"RepoCount":"3","CreateTime":"2022-05-31 20:10:29"}]}"#;
        let out: DescribeNamespaceOutput = serde_json::from_str(body).unwrap();
        assert_eq!(out.total_count, 1);
        assert_eq!(out.items[0].repo_count, 3);
        assert!(out.items[0].public);
    }

    #[test]
    fn nulls_for_desc_expire_and_lists() {
        let body = r#"{"RequestId":"x","TotalCount":1,"Marker":0,"TokenSet":[
            {"TokenId":"e40c","Enable":true,"Desc":null,"CreateTime":"2022-06-16 16:55:49","ExpireTime":null}]}"#;
        let out: DescribeInstanceTokenOutput = serde_json::from_str(body).unwrap();
        assert_eq!(out.items[0].desc, None);
        assert_eq!(out.items[0].expire_time, None);
        let body = r#"{"RequestId":"x","TotalCount":0,"Marker":0,"ImageSet":null}"#;
        let out: DescribeImagesOutput = serde_json::from_str(body).unwrap();
        assert!(out.items.is_empty());
        let body = r#"{"RequestId":"x","TotalCount":1,"ImageSet":[{"ImageId":"sha256:a","Size":"12","CreateTime":"2022-06-27 12:03:37","TagNames":null}]}"#;
        let out: DescribeImagesOutput = serde_json::from_str(body).unwrap();
        assert_eq!(out.items[0].size, 12);
        assert!(out.items[0].tag_names.is_empty());
    }

    #[test]
    fn ids_as_numbers_and_unknown_fields() {
        let body = r#"{"InstanceSet":[{"InstanceId":123,"InstanceName":"a","ProjectId":0,
            "ExpiredTime":null,"NewField":{"x":[1,2]}}],"TotalCount":1,"RequestId":"r"}"#;
        let out: DescribeInstanceOutput = serde_json::from_str(body).unwrap();
        assert_eq!(out.items[0].instance_id, "123");
        assert_eq!(out.items[0].project_id.as_deref(), Some("0"));
    }

    #[test]
    fn params_are_written_as_the_reference_says() {
        let mut p = Params::default();
        CreateInstanceToken {
            instance_id: "i".into(),
            lifetime: TokenLifetime::Days(30),
            desc: Some("kcr-housekeeper/ci/r1".into()),
        }
        .write_params(&mut p);
        assert_eq!(p.get("TokenType"), Some("Day"));
        assert_eq!(p.get("TokenTime"), Some("30"));
        let mut p = Params::default();
        ModifyNamespaceType {
            instance_id: "i".into(),
            namespace: "n".into(),
            public: false,
        }
        .write_params(&mut p);
        assert_eq!(p.get("Public"), Some("False"));
        let mut p = Params::default();
        DescribeInstance {
            instance_ids: vec!["a".into(), "b".into()],
            ..Default::default()
        }
        .write_params(&mut p);
        assert_eq!(p.get("InstanceId.1"), Some("a"));
        assert_eq!(p.get("InstanceId.2"), Some("b"));
    }
}
