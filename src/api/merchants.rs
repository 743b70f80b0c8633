//! `paygate.v1.MerchantService` (admin token only; the auth layer checks it).

use tonic::{Request, Response, Status};

use crate::{
    error::InvalidArgument,
    merchants,
    proto::v1::{self as pb, merchant_service_server::MerchantService},
    store::Db,
};

pub struct MerchantsApi {
    db: Db,
}

impl MerchantsApi {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl MerchantService for MerchantsApi {
    async fn create_merchant(
        &self,
        request: Request<pb::CreateMerchantRequest>,
    ) -> Result<Response<pb::CreateMerchantResponse>, Status> {
        let created = merchants::create_merchant(&self.db, &request.get_ref().name, None).await?;
        tracing::info!(merchant_id = %created.merchant_id, "merchant created");
        Ok(Response::new(pb::CreateMerchantResponse { merchant_id: created.merchant_id, api_key: created.api_key }))
    }

    async fn create_sub_merchant(
        &self,
        request: Request<pb::CreateSubMerchantRequest>,
    ) -> Result<Response<pb::CreateMerchantResponse>, Status> {
        let r = request.into_inner();
        if r.parent_merchant_id.is_empty() {
            return Err(InvalidArgument::single("parent_merchant_id", "is required").into());
        }
        let created = merchants::create_merchant(&self.db, &r.name, Some(&r.parent_merchant_id)).await?;
        tracing::info!(merchant_id = %created.merchant_id, parent = %r.parent_merchant_id, "sub-merchant created");
        Ok(Response::new(pb::CreateMerchantResponse { merchant_id: created.merchant_id, api_key: created.api_key }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let merchant_id = &request.get_ref().merchant_id;
        if merchant_id.is_empty() {
            return Err(InvalidArgument::single("merchant_id", "is required").into());
        }
        let api_key = merchants::create_api_key(&self.db, merchant_id).await?;
        Ok(Response::new(pb::CreateApiKeyResponse { api_key }))
    }
}
